"""Step 7: take the model away: a verified file in a standard format, with its labels, preprocessing and card."""
from pathlib import Path

import streamlit as st

from pages.ui import common
from tl_core.use.export import FORMATS, ExportMismatch, export_run

FORMAT_USES = {
    "onnx": "ONNX: runs without PyTorch, with ONNX Runtime on servers, phones, browsers, C#, Java or C++.",
    "torchscript": "TorchScript: one file for PyTorch or LibTorch (C++), no model code needed to load it.",
    "safetensors": "safetensors: the weights alone, safe to load, for Python with timm, or to train further.",
}
state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("7 · Export")
st.write("Each export is loaded back the way you would load it and run on the validation images; it is kept "
         "only when it gives the same answers as the model you trained.")
run_dir = common.pick_finished_run("export_run")
fmt = st.radio("Format", FORMATS, key="export_format", captions=[FORMAT_USES[f] for f in FORMATS],
               format_func=lambda f: {"onnx": "ONNX", "torchscript": "TorchScript"}.get(f, f))

if st.button("Export", key="export_start", type="primary", icon=":material/package_2:"):
    with st.spinner(f"Exporting to {fmt} and checking it against the trained model…"):
        try:
            state.export_result = {"run": str(run_dir), "format": fmt, "report": export_run(run_dir, fmt)}
        except ExportMismatch as error:  # its message holds the figures of the failed check
            state.export_result = {"run": str(run_dir), "format": fmt, "error": str(error)}
        except Exception as error:  # an exporter's failure is a message on this page, never a traceback
            state.export_result = {"run": str(run_dir), "format": fmt,
                                   "error": f"The {fmt} export failed: {error}"}

result = state.get("export_result")
if result and result["run"] == str(run_dir) and result["format"] == fmt:
    report = result.get("report")
    if report is None:
        st.error(common.literal(result["error"]), icon=":material/error:")
        st.stop()
    st.success(f"Verified: the {fmt} file gives the same answers as the trained model.", icon=":material/verified:")
    images_col, agreement_col, difference_col = st.columns(3)
    images_col.metric("Images checked", report["images"], help=f"from {report.get('source', 'the validation set')}")
    agreement_col.metric("Top-1 agreement", f"{report['top1_agreement']:.1%}",
                         help=f"{report['top1_exact']} of {report['images']} exactly the same top class; "
                              "a near-tie counts as agreeing")
    difference_col.metric("Largest probability difference", f"{report['max_prob_diff']:.1e}",
                          help=f"allowed: {report['tolerance']:g}")
    st.caption(common.literal(f"{Path(report['path']).name}: {report['size_bytes'] / 1e6:.1f} MB, written by "
                              f"{report['exporter']} in {report['export_s']:.1f} s, checked in "
                              f"{report['verify_s']:.1f} s."))
    st.download_button(f"Download the {fmt} bundle (zip)", data=Path(report["zip"]).read_bytes(),
                       file_name=f"{run_dir.name}-{fmt}.zip", mime="application/zip", key="export_download",
                       on_click="ignore", type="primary", icon=":material/download:")
    with st.expander("Model card (MODEL_CARD.md in the zip)", expanded=True, icon=":material/description:"):
        card = Path(report["bundle"]) / "MODEL_CARD.md"
        if card.exists():  # shown as its text: the card quotes class and dataset names, which are no markup
            st.code(card.read_text(errors="replace"), language="markdown", wrap_lines=True)
        else:
            st.caption("The model card is missing from the bundle.")
