"""The Results page's headline of a finished classifier: its scores (accuracy with its interval, balanced
accuracy, F1, loss), how it was trained and validated, and the advice on what to try next."""
from __future__ import annotations

import streamlit as st

from tl_core import plots
from tl_core.use import advice
from tl_core.plan import auto_plan
from tl_core.ops import runs

from pages.ui import data_quality, labels, target_domain
from pages.ui.text import literal
from tl_core.ops import words
from tl_core.ops import glossary
from tl_core.ops.words import plural
from tl_core.use import run_facts


def headline_section(run_dir, metrics: dict, events: list[dict]) -> None:
    """The scores in a row, then how they were measured and what the run's numbers advise."""
    if warning := advice.headline(metrics, events):  # a weak or unstable run says so before any number
        st.warning(literal(warning), icon=":material/report:")
    known = run_facts.facts(run_dir)  # the same figures as Runs, the model card and the command line
    accuracy_col, balanced_col, f1_col, loss_col, epoch_col, time_col, speed_col = st.columns(7)
    # short labels: a metric tile cuts a long one ("Validation acc…"); the help says it in full
    accuracy_col.metric("Mean task score" if metrics.get("tasks") else "Accuracy", known["accuracy_words"],
                        delta=f"95 %: {known['interval_words']}" if known["interval"] else None,
                        delta_arrow="off", delta_color="off",
                        help=(f"Validation accuracy on {plural(known['n_val'], 'image')}; with 95 % confidence the "
                              "accuracy on more images like these lies in the interval below it."
                              if known["interval"] else "Validation accuracy"))
    if metrics.get("val_balanced_acc") is not None:
        balanced_col.metric("Balanced", f"{metrics['val_balanced_acc']:.1%}",
                            help="Balanced accuracy: the mean of the classes' recalls; every class counts the same, "
                                 "however many images it has")
    f1_col.metric("Macro F1", f"{metrics.get('macro_f1', 0):.3f}", help="F1 averaged over classes, each counting the same")
    loss_col.metric("Val. loss", f"{metrics.get('val_loss', float('nan')):.3f}", help="Validation loss")
    epoch_col.metric("Best epoch", f"{metrics.get('best_epoch', '–')} of {metrics.get('epochs_run', '–')}")
    time_col.metric("Time", words.format_seconds(known["wall_s"], short=True),
                    help=f"The whole run, from its start to its end: {known['wall_words']}"
                         + (f" ({known['wall_parts_words']})" if known["wall_parts_words"] else ""))
    speed_col.metric("Images/s", f"{metrics.get('images_per_s', 0):,.0f}",
                     help="Training images processed per second while fitting")
    data_quality.imbalance_headline(metrics)
    target_domain.results_section(metrics)
    learnt, total = known["learnt_params"], known["total_params"]
    trained = (f"; {learnt:,} of {total:,} parameters learnt ({known['learnt_words']})"
               if isinstance(learnt, int) and isinstance(total, int) else "")
    if metrics.get("kept", {}).get("reason"):
        st.info(literal(str(metrics["kept"]["reason"]) + "."), icon=":material/info:")
    weights = runs.read_config_record(run_dir).get("config", {}).get("weights")
    started_from = f" Started from {literal(labels.weights_label(weights))} weights." if weights else ""
    st.caption(f"Trained on {literal(metrics.get('device', 'unknown device'))}{trained}. "
               f"{labels.validation_words(metrics)}{started_from}",
               help=glossary.explain("probe") + "\n\n" + glossary.explain(
                   "cross-validation" if known["validation"] == "cv" else "hold-out"))
    record = runs.read_config_record(run_dir)
    if choice := record.get("features_choice"):
        st.caption(literal(choice["words"][:1].upper() + choice["words"][1:] + "."),
                   help=glossary.explain("multi-layer features") + "\n\n" + glossary.explain("validation loss"))
    if measured := auto_plan.read_measurement(run_dir):
        with st.expander(f"Auto plan: {measured['words'][:80]}…" if len(measured["words"]) > 80
                         else f"Auto plan: {measured['words']}"):
            if plots.plan_is_chart(measured):
                st.plotly_chart(plots.plan_figure(measured), key="results_plan_chart")
            st.text(measured["words"])
    for step in advice.next_steps(metrics, events, record):
        st.warning(literal(step), icon=":material/lightbulb:")
