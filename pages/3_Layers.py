"""Step 3: choose which layer groups of the backbone learn and which stay frozen."""
import streamlit as st

from pages.ui import common
from tl_core.models import layers
from tl_core.plan import plan_cost
from tl_core import plots
from tl_core.ops import words

PRESETS = {
    "auto": "Auto: measured on your images, within a time budget (recommended)",
    "head": "Feature extraction: only the new head learns (fastest; best with few images)",
    "top": "Fine-tune the top layer groups and the head",
    "all": "Full fine-tune: every layer learns (needs more images and time)",
    "custom": "Custom: choose with the switches below",
}
FEATURES = {
    "auto": "Auto: cross-validation picks (for feature extraction)",
    "last": "The last layer",
    "multi-layer": "Every layer, pooled",
}
state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own

st.title("3 · Choose which layers learn")
st.write("The backbone is a stack of layer groups, from the input image (top) to the head that names your "
         "classes (bottom). Frozen groups keep what they learnt on ImageNet; trainable groups adapt to your images.")

dataset = common.active_dataset()
n_classes = dataset.num_outputs if dataset is not None else 2  # the head's size depends on it (every task's classes)
with st.spinner(f"Building {state.backbone}…"):
    try:
        model = common.structure_model(state.backbone, n_classes)
    except common.USER_ERRORS as error:
        common.show_error(error)
        common.need_first("Choose another backbone first.", common.BACKBONE_PAGE, "1 · Backbone")
groups = layers.layer_groups(model)
body, head = groups[:-1], groups[-1]
toggle_key = {group.name: f"learns::{state.backbone}::{group.name}" for group in groups}


def freeze_spec_from_preset() -> str:
    if state.freeze_preset == "top":
        return f"top-{min(state.freeze_top_n, len(body))}"
    return state.freeze_preset if state.freeze_preset in ("auto", "head", "all") else state.freeze


def freeze_spec_from_switches() -> str:
    learning = [group.name for group in body if state.get(toggle_key[group.name])]
    if not learning:
        return "head"
    return "all" if len(learning) == len(body) else ",".join(learning)


def switch_flipped() -> None:
    state.freeze_preset = "custom"
    state.freeze = freeze_spec_from_switches()


@st.cache_data(show_spinner=False, max_entries=64)
def plan_seconds(backbone: str, n_classes: int, image_size: int, trainable: frozenset, bn_policy: str,
                 n_train: int, n_val: int, augment: str) -> dict:
    """Measured once per backbone, size, plan and data (plan_cost.estimate)."""
    return plan_cost.estimate(common.structure_model(backbone, n_classes), image_size, set(trainable), bn_policy,
                              n_train, n_val, augment)


# ---------------------------------------------------------------- the plan
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
    state.freeze = freeze_spec_from_preset()
# Auto: the switches show what surely learns (the head); the run measures whether more should.
trainable = layers.parse_freeze("head" if state.freeze == "auto" else state.freeze, groups)
if state.freeze == "auto":
    st.slider("Time budget, as a multiple of feature extraction's time", 1.0, 20.0, key="auto_budget", step=0.5,
              help="The Auto plan always measures feature extraction (last-layer and multi-layer features). "
                   "Fine-tuning candidates (top 1, 2, 4 groups, then all) are measured while their estimated time "
                   "fits this budget; the plan kept is the simplest one that no other beats by more than the noise.")
    measured = common.plan_measurement()
    if measured:
        st.plotly_chart(plots.plan_figure(measured), key="plan_chart")
        st.caption(common.literal(f"From the Auto run {common.run_label(measured['run'])}: {measured['words']}."))
    else:
        st.caption("Train once with Auto: the measurement of which layers should learn appears here, "
                   "from your own images.")
for group in groups:  # the switches show the plan; flipping one makes the plan custom
    state[toggle_key[group.name]] = group.name in trainable

state.bn_policy = "eval" if state.bn_keep_eval else "train"
common.sync_lr()

# ---------------------------------------------------------------- what the plan costs
common.sync_image_size()
n_images = len(dataset.items) if dataset is not None else 100
n_val = 0 if state.val_source == "separate" else round(n_images * state.val_fraction)
n_train = n_images - n_val
with st.spinner("Timing one small batch on this computer…"):
    cost = plan_seconds(state.backbone, n_classes, state.image_size, frozenset(trainable), state.bn_policy,
                        n_train, n_val, state.augment)
head_only = trainable == {head.name}
epoch_s = cost["epoch_s"]

trainable_params = sum(group.num_params for group in groups if group.name in trainable)
total_params = sum(group.num_params for group in groups)
params_col, groups_col, time_col = st.columns(3)
params_col.metric("Trainable parameters", f"{trainable_params:,}", delta_arrow="off", delta_color="off",
                  delta=f"{trainable_params / total_params:.1%} of {total_params:,}")
groups_col.metric("Groups that learn", f"{len(trainable)} of {len(groups)}", delta_arrow="off", delta_color="off",
                  delta=f"plan: {state.freeze}")
if head_only and state.augment == "none":
    time_col.metric("Estimated time", words.format_seconds(cost["once_s"]), delta_arrow="off", delta_color="off",
                    delta=f"{n_images} images at {state.image_size} px")
    st.write(f"Only the head learns, so each image goes through the frozen backbone **once** (about "
             f"{words.format_seconds(cost['once_s'])}); after that an epoch takes well under a second. With "
             "augmentation (next step) every epoch runs the images through again.")
else:
    time_col.metric("Estimated time per epoch", words.format_seconds(epoch_s), delta_arrow="off", delta_color="off",
                    delta=f"{n_train} + {n_val} images at {state.image_size} px")
    if cost["once_s"]:
        st.caption(f"Before the first epoch, every image goes once through the frozen layers (about "
                   f"{words.format_seconds(cost['once_s'])}), for the head's first fit and for the layers that "
                   "never change.")
on_gpu = "CUDA" in common.device_name()
st.caption(f"An estimate, from timing one batch of {plan_cost.TIMING_BATCH} images on this computer's CPU"
           + (f"; training runs on the {common.device_name()}, which is much faster." if on_gpu else ".")
           + ("" if dataset is not None else " No dataset chosen yet, so it assumes 100 images of 2 classes."))
if dataset is None:
    st.page_link(common.DATA_PAGE, label="Choose your images (step 2) for a real estimate",
                 icon=":material/photo_library:")

# ---------------------------------------------------------------- the stack
largest = max(group.num_params for group in groups) or 1
st.caption(":material/image: Input image")
for group in groups:
    learns = group.name in trainable
    with st.container(border=True):
        name_col, size_col, count_col, switch_col = st.columns([2, 4, 1.8, 1.2], vertical_alignment="center")
        icon = ":material/school:" if learns else ":material/ac_unit:"
        name_col.markdown(f"{icon} **{group.name}**" + ("  \n*new, for your classes*" if group.is_head else ""))
        size_col.progress(group.num_params / largest)
        count_col.markdown(f"{group.num_params:,} parameters")
        switch_col.toggle("learns", key=toggle_key[group.name], disabled=group.is_head, on_change=switch_flipped,
                          help="The head always learns: it is new." if group.is_head else None)
st.caption(":material/label: Your classes")

st.radio("What the head reads", list(FEATURES), key="features", format_func=FEATURES.get, horizontal=True,
         help="The last layer sums up an image the way ImageNet photos taught it. Every layer adds the early "
              "layers' edges and textures, which often tell apart images unlike photos (drawings, scans, "
              "grayscale): on Fashion-MNIST at 20 images a class they gave 82.8 % against 78.5 %.")

st.toggle("Keep BatchNorm statistics from pretraining", key="bn_keep_eval",
          help="Every BatchNorm layer keeps normalising with the statistics it learnt on ImageNet; the layers that "
               "train still adapt. Recommended for small datasets: re-estimating the statistics from a few "
               "images at a time shifts every feature at once and can wipe out what the head learnt. "
               "Turn off only for large datasets that differ a lot from photos.")

st.divider()
st.page_link(common.TRAIN_PAGE, label="Next: train", icon=":material/arrow_forward:")
