"""The Results page's test on a held-out set: a labelled zip or folder the model never saw, tested in the app's own
process (a small set: tl_core.use.heldout.MAX_IMAGES), its accuracy with the interval, confusion and mistakes."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core import plots
from tl_core.data.datasets import DatasetError
from tl_core.ops import runs
from tl_core.use import heldout, run_facts

from pages.ui import uploads, widgets
from pages.ui.text import literal

MISTAKES_SHOWN = 24


def heldout_section(run_dir: Path) -> None:
    """Upload a labelled set the model never saw; the last test of this run, read back from its folder."""
    st.subheader("Test on pictures it never saw")
    st.caption("A folder or zip with one folder per class, named like the model's classes. The pictures are tested "
               f"here, on this server (at most {heldout.MAX_IMAGES}; more with `python -m tl_core evaluate RUN --data "
               "FOLDER --save`, whose result shows here too), "
               "and are not kept as a dataset; only the result and the pictures it got wrong are kept with the run.")
    zip_tab, folder_tab = st.tabs([":material/folder_zip: A zip", ":material/folder_open: A folder"])
    with zip_tab:
        archive = st.file_uploader("A .zip with one folder per class", type=["zip"], key="heldout_zip")
        if st.button("Test on this zip", key="heldout_zip_test", disabled=archive is None):
            _test(run_dir, archive.getvalue(), archive.name)
    with folder_tab:
        folder = st.file_uploader("Choose the folder", accept_multiple_files="directory", key="heldout_folder")
        if st.button("Test on this folder", key="heldout_folder_test", disabled=not folder):
            _test(run_dir, uploads.files_from_folder_upload(folder), uploads.upload_name(folder, "folder"))
    result = runs.read_heldout(run_dir)
    if result:
        show_result(run_dir, result)


def _test(run_dir: Path, source, label: str) -> None:
    bar = st.progress(0.0, text="Testing…")
    try:
        heldout.test_heldout(run_dir, source, label=label,
                             progress=lambda done, total: bar.progress(done / total, text=f"Tested {done} of {total}"))
    except (DatasetError, ValueError) as error:
        st.error(literal(error))
        for refused in getattr(error, "refused", [])[:20]:
            st.text(f"{refused['name']}: {refused['reason']}")
    except Exception as error:  # a damaged model file is this run's problem, said here, not a crash
        st.error(f"This run's model could not be tested: {literal(error)}")
    finally:
        bar.empty()


def show_result(run_dir: Path, result: dict) -> None:
    """Accuracy with its 95 % interval, what could not be tested, the confusion matrix and the mistakes."""
    st.text(f"Last test: {result.get('source', 'held-out set')}")
    images, accuracy = result["images"], result["accuracy"]
    accuracy_col, balanced_col, count_col = st.columns(3)
    accuracy_col.metric("Held-out accuracy", f"{accuracy:.1%}",
                        delta=f"95 %: {run_facts.interval_text(result['interval'])}", delta_color="off",
                        delta_arrow="off", help="The true accuracy on pictures like these lies in this interval "
                                                "19 times out of 20 (Wilson interval).")
    balanced_col.metric("Balanced accuracy", f"{result['balanced_accuracy']:.1%}",
                        help="The mean of the per-class recalls: every class counts the same.")
    count_col.metric("Pictures tested", f"{images:,}")
    if result.get("in_training"):
        st.warning(f"{result['in_training']} of these pictures are also in the training data: the model saw them, "
                   "so this test flatters it.", icon=":material/warning:")
    if result.get("skipped"):
        with st.expander(f"Not tested ({len(result['skipped'])})", icon=":material/block:"):
            for skipped in result["skipped"]:
                st.text(f"{skipped['name']}: {skipped['reason']}")
    st.plotly_chart(plots.confusion_figure(result), key="heldout_confusion")
    mistakes = result.get("mistakes", [])
    if not mistakes:
        st.success("It got every picture right.", icon=":material/check_circle:")
        return
    st.write(f"**Its mistakes** ({len(mistakes)}, the surest first)")
    shown = [(widgets.thumbnail(str(heldout.mistake_picture(run_dir, m)), 128),
              f"{m['name']}: {m['label']} → {m['predicted']} ({m['confidence']:.0%})") for m in mistakes[:MISTAKES_SHOWN]]
    shown = [(image, caption) for image, caption in shown if image is not None]
    if shown:
        st.image([image for image, _ in shown], width=128, caption=[literal(caption) for _, caption in shown])
