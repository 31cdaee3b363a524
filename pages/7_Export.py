"""Step 7: take the model away: a verified file in a standard format, with its labels, preprocessing and card."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
from pathlib import Path

import streamlit as st

from pages.ui import kinds, session, widgets
from pages.ui.text import literal
from tl_core.use.export import FORMATS, ExportMismatch, export_run

FORMAT_USES = {
    "onnx": "ONNX: runs without PyTorch, with ONNX Runtime on servers, phones, browsers, C#, Java or C++.",
    "torchscript": "TorchScript: one file for PyTorch or LibTorch (C++), no model code needed to load it.",
    "safetensors": "safetensors: the weights alone, safe to load, for Python with timm, or to train further.",
}
state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own


def exporter(run_dir: Path):
    """(the formats the run's kind exports, the function that writes and checks one): the kind's own hooks,
    tl_core's classifier export for a kind the engine does not list."""
    kind = kinds.info(kinds.of_run(run_dir))
    if kind is None:
        return FORMATS, export_run
    return kind.export_formats, lambda run_dir, fmt: kind.call("export", run_dir, fmt, None)


def start_export(run_dir: Path, fmt: str, export) -> None:
    """Write and check the bundle; the outcome, a report or the reason it failed, is kept for this run and format."""
    with st.spinner(f"Exporting to {fmt} and checking it against the trained model…"):
        try:
            state.export_result = {"run": str(run_dir), "format": fmt, "report": export(run_dir, fmt)}
        except ExportMismatch as error:  # its message holds the figures of the failed check
            state.export_result = {"run": str(run_dir), "format": fmt, "error": str(error)}
        except Exception as error:  # an exporter's failure is a message on this page, never a traceback
            state.export_result = {"run": str(run_dir), "format": fmt,
                                   "error": f"The {fmt} export failed: {error}"}


def verified(run_dir: Path, fmt: str, report: dict) -> None:
    """The check's figures, the download, and the model card."""
    st.success(f"Verified: the {fmt} file gives the same answers as the trained model.", icon=":material/verified:")
    images_col, agreement_col, difference_col = st.columns(3)
    images_col.metric("Images checked", report["images"], help=f"from {report.get('source', 'the validation set')}")
    agreement_col.metric("Top-1 agreement", f"{report['top1_agreement']:.1%}",
                         help=f"{report['top1_exact']} of {report['images']} exactly the same top class; "
                              "a near-tie counts as agreeing")
    difference_col.metric("Largest probability difference", f"{report['max_prob_diff']:.1e}",
                          help=f"allowed: {report['tolerance']:g}")
    st.caption(literal(f"{Path(report['path']).name}: {report['size_bytes'] / 1e6:.1f} MB, written by "
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


def described(report: dict) -> None:
    """A kind's own bundle, as its export hook describes it."""
    st.success("Exported and checked by the run's task kind.", icon=":material/verified:")
    st.json(report)
    if report.get("zip") and Path(report["zip"]).is_file():
        st.download_button("Download the bundle (zip)", data=Path(report["zip"]).read_bytes(),
                           file_name=Path(report["zip"]).name, mime="application/zip", key="export_download",
                           on_click="ignore", type="primary", icon=":material/download:")


def export_body(run_dir: Path) -> None:
    """Choose a format, export, and see the check."""
    formats, export = exporter(run_dir)
    if state.get("export_format") not in formats:
        state.pop("export_format", None)  # chosen for a run of another kind
    fmt = st.radio("Format", formats, key="export_format", captions=[FORMAT_USES.get(f, "") for f in formats],
                   format_func=lambda f: {"onnx": "ONNX", "torchscript": "TorchScript"}.get(f, f))
    if st.button("Export", key="export_start", type="primary", icon=":material/package_2:"):
        start_export(run_dir, fmt, export)
    result = state.get("export_result")
    if result and result["run"] == str(run_dir) and result["format"] == fmt:
        if result.get("report") is None:
            st.error(literal(result["error"]), icon=":material/error:")
        elif "top1_agreement" in result["report"]:  # a classifier's parity check
            verified(run_dir, fmt, result["report"])
        else:
            described(result["report"])


st.title("7 · Export")
st.write("Each export is loaded back the way you would load it and run on the validation images; it is kept "
         "only when it gives the same answers as the model you trained.")
run_dir = widgets.pick_finished_run("export_run")
if (kind_export := kinds.section(kinds.of_run(run_dir), "export")) is not None:
    kind_export(run_dir)
else:
    export_body(run_dir)
