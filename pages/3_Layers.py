"""Step 3: choose which layer groups of the backbone learn and which stay frozen."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
import streamlit as st

from pages.ui import kinds, labels, layer_cost, models, nav, plan_expectations, session, widgets
from pages.ui.text import literal
from tl_core import plots
from tl_core.plan import auto_plan
from tl_core.models import layers
from tl_core.ops import glossary

PRESETS = {
    "auto": "Auto: measured on your images, within a time budget (recommended)",
    "head": "Feature extraction: only the new head learns (fastest; best with few images)",
    "top": "Fine-tune the top layer groups and the head",
    "all": "Full fine-tune: every layer learns (needs more images and time)",
    "custom": "Custom: choose with the switches below",
}
FEATURES = {
    "auto": "Auto: the lower validation loss picks, by cross-validation (every plan: fine-tuning starts from that head)",
    "last": "The last layer",
    "multi-layer": "Every layer, pooled",
}
state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own


def toggle_key(group_name: str) -> str:
    """The switch of one layer group, per backbone (another backbone's groups have other names)."""
    return f"learns::{state.backbone}::{group_name}"


def freeze_spec_from_preset(body) -> str:
    """The freeze plan a preset means for these layer groups (`body`: all but the head)."""
    if state.freeze_preset == "top":
        return f"top-{min(state.freeze_top_n, len(body))}"
    return state.freeze_preset if state.freeze_preset in ("auto", "head", "all") else state.freeze


def freeze_spec_from_switches(body) -> str:
    """The freeze plan the switches show."""
    learning = [group.name for group in body if state.get(toggle_key(group.name))]
    if not learning:
        return "head"
    return "all" if len(learning) == len(body) else ",".join(learning)


def switch_flipped(body) -> None:
    """A flipped switch makes the plan custom."""
    state.freeze_preset = "custom"
    state.freeze = freeze_spec_from_switches(body)


def plan_section(groups, classifier: bool = True) -> set:
    """The plan: a preset (or the switches), Auto's time budget and its last measurement; the groups that learn."""
    body = groups[:-1]
    try:
        if state.freeze != "auto":
            layers.parse_freeze(state.freeze, groups)
    except ValueError:  # a plan made for another backbone's groups
        state.freeze, state.freeze_preset = "auto", "auto"
    if state.freeze_top_n > len(body):
        state.freeze_top_n = max(1, len(body))

    st.radio("Plan", list(PRESETS), key="freeze_preset", format_func=PRESETS.get)
    if state.freeze_preset == "top":
        st.slider("Layer groups below the head that learn", 1, max(len(body), 1), key="freeze_top_n")
    if state.freeze_preset != "custom":
        state.freeze = freeze_spec_from_preset(body)
    # Auto: the switches show what surely learns (the head); the run measures whether more should.
    trainable = layers.parse_freeze("head" if state.freeze == "auto" else state.freeze, groups)
    if state.freeze == "auto" and not classifier:
        st.caption(literal(kinds.option(kinds.current(), "auto_words", "")))
    if state.freeze == "auto" and classifier:
        st.slider("Time budget, as a multiple of feature extraction's time", 1.0, 20.0, key="auto_budget",
                  step=0.5,
                  help="The Auto plan always measures feature extraction (last-layer and multi-layer features). "
                       "Fine-tuning candidates (top 1, 2, 4 groups, then all) are measured while their estimated "
                       "time fits this budget; the plan kept is the simplest one that no other beats by more than "
                       "the noise. " + glossary.explain("time budget"))
    if state.freeze == "auto":
        measured = auto_plan.latest_measurement(state.dataset_dir, state.backbone) if state.dataset_dir else None
        if measured and plots.plan_is_chart(measured):
            st.plotly_chart(plots.plan_figure(measured), key="plan_chart")
        if measured and measured.get("words"):  # plan.json of a detector made before it carried words has none
            st.caption(literal(f"From the Auto run {labels.run_label(measured['run'])}: {measured['words']}."))
        else:
            st.caption("Train once with Auto: the measurement of which layers should learn appears here, "
                       "from your own images.")
    for group in groups:  # the switches show the plan; flipping one makes the plan custom
        state[toggle_key(group.name)] = group.name in trainable
    return trainable


def stack_section(groups, trainable: set) -> None:
    """The layer groups from the input image to the head, each with its size and its switch."""
    largest = max(group.num_params for group in groups) or 1
    st.caption(":material/image: Input image")
    for group in groups:
        learns = group.name in trainable
        with st.container(border=True):
            name_col, size_col, count_col, switch_col = st.columns([2, 4, 1.8, 1.2],
                                                                   vertical_alignment="center")
            icon = ":material/school:" if learns else ":material/ac_unit:"
            name_col.markdown(f"{icon} **{group.name}**" + ("  \n*new, for your classes*" if group.is_head else ""))
            size_col.progress(group.num_params / largest)
            count_col.markdown(f"{group.num_params:,} parameters")
            switch_col.toggle("learns", key=toggle_key(group.name), disabled=group.is_head,
                              on_change=switch_flipped, args=(groups[:-1],),
                              help="The head always learns: it is new." if group.is_head
                              else glossary.explain("layer groups"))
    st.caption(":material/label: Your classes")


def head_options(classifier: bool = True) -> None:
    """What the head reads (a classifier's head), and whether BatchNorm keeps its pretrained statistics."""
    if classifier:
        st.radio("What the head reads", list(FEATURES), key="features", format_func=FEATURES.get, horizontal=True,
                 help="The last layer sums up an image the way ImageNet photos taught it. Every layer adds the early "
                      "layers' edges and textures, which often tell apart images unlike photos (drawings, scans, "
                      "grayscale): on Fashion-MNIST at 20 images a class they gave 82.8 % against 78.5 %. "
                      + glossary.explain("multi-layer features"))

    st.toggle("Keep BatchNorm statistics from pretraining", key="bn_keep_eval",
              help="Every BatchNorm layer keeps normalising with the statistics it learnt on ImageNet; the layers "
                   "that train still adapt. Recommended for small datasets: re-estimating the statistics from a few "
                   "images at a time shifts every feature at once and can wipe out what the head learnt. "
                   "Turn off only for large datasets that differ a lot from photos.")


def layer_choice() -> None:
    """The generic Layers page: the backbone's layer groups, the plan, what it costs, the stack."""
    st.write("The backbone is a stack of layer groups, from the input image (top) to the head that names your "
             "classes (bottom). Frozen groups keep what they learnt on ImageNet; trainable groups adapt to your "
             "images.")
    dataset = session.active_dataset()
    # the head's size depends on the class count (every task's classes)
    n_classes = dataset.num_outputs if dataset is not None else 2
    with st.spinner(f"Building {state.backbone}…"):
        try:
            model = models.structure_model(state.backbone, n_classes)
        except widgets.USER_ERRORS as error:
            widgets.show_error(error)
            nav.need_first("Choose another backbone first.", nav.BACKBONE_PAGE, "1 · Backbone")
    groups = layers.layer_groups(model)
    classifier = kinds.option(kinds.current(), "classifier_plan_tools", True)  # timed and benched as a classifier
    trainable = plan_section(groups, classifier)
    state.bn_policy = "eval" if state.bn_keep_eval else "train"
    session.sync_lr()
    if classifier:
        layer_cost.cost_section(dataset, groups, trainable, n_classes)
        plan_expectations.expectation_section(dataset, state.freeze, state.backbone)
    stack_section(groups, trainable)
    head_options(classifier)


st.title("3 · Choose which layers learn")
if (kind_layers := kinds.section(kinds.current(), "layers")) is not None:
    kind_layers()
else:
    layer_choice()
with st.expander("Glossary", icon=":material/menu_book:"):
    st.markdown(glossary.glossary_markdown())
st.divider()
st.page_link(nav.TRAIN_PAGE, label="Next: train", icon=":material/arrow_forward:")
