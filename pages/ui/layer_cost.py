"""The Layers page's price of a freeze plan: trainable parameters, and the time per epoch estimated by timing one
small batch on this computer (tl_core.plan.plan_cost)."""
from __future__ import annotations

import streamlit as st

from tl_core.data.datasets import stratified_split
from tl_core.plan import plan_cost

from pages.ui import jobs, models, nav, session
from tl_core.ops import words
from tl_core.ops.words import plural


@st.cache_data(show_spinner=False, max_entries=64)
def plan_seconds(backbone: str, n_classes: int, image_size: int, trainable: frozenset, bn_policy: str,
                 n_train: int, n_val: int, augment: str) -> dict:
    """Measured once per backbone, size, plan and data (plan_cost.estimate)."""
    return plan_cost.estimate(models.structure_model(backbone, n_classes), image_size, set(trainable), bn_policy,
                              n_train, n_val, augment)


def split_sizes(dataset, n_images: int) -> tuple[int, int]:
    """(training, validation) images of the split the run will really make: per class, rounded as
    stratified_split rounds (72 images of 6 classes hold out 12, not round(72 × 0.2) = 14)."""
    state = st.session_state
    if state.val_source == "separate":
        return n_images, 0
    if dataset is None or dataset.tasks:  # no classes to stratify by: the plain share
        n_val = round(n_images * state.val_fraction)
        return n_images - n_val, n_val
    train_idx, val_idx = stratified_split(dataset.labels(), float(state.val_fraction),
                                          int(state.get("setting_seed", 0)))
    return len(train_idx), len(val_idx)


def cost_section(dataset, groups, trainable: set, n_classes: int) -> None:
    """What the plan costs: parameters that learn, groups that learn, and the time it will take."""
    state = st.session_state
    session.sync_image_size()
    head = groups[-1]
    n_images = len(dataset.items) if dataset is not None else 100
    n_train, n_val = split_sizes(dataset, n_images)
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
                        delta=f"{plural(n_images, 'image')} at {state.image_size} px")
        st.write(f"Only the head learns, so each image goes through the frozen backbone **once** (about "
                 f"{words.format_seconds(cost['once_s'])}); after that an epoch takes well under a second. With "
                 "augmentation (next step) every epoch runs the images through again.")
    else:
        time_col.metric("Estimated time per epoch", words.format_seconds(epoch_s), delta_arrow="off",
                        delta_color="off", delta=f"{n_train} + {plural(n_val, 'image')} at {state.image_size} px",
                        help=f"{plural(n_train, 'training image')} and {plural(n_val, 'validation image')}, "
                             "the split the run will make")
        if cost["once_s"]:
            st.caption(f"Before the first epoch, every image goes once through the frozen layers (about "
                       f"{words.format_seconds(cost['once_s'])}), for the head's first fit and for the layers that "
                       "never change.")
    on_gpu = "CUDA" in jobs.device_name()
    st.caption(f"An estimate, from timing one batch of {plan_cost.TIMING_BATCH} images on this computer's CPU"
               + (f"; training runs on the {jobs.device_name()}, which is much faster." if on_gpu else ".")
               + ("" if dataset is not None else " No dataset chosen yet, so it assumes 100 images of 2 classes."))
    if dataset is None:
        st.page_link(nav.DATA_PAGE, label="Choose your images (step 2) for a real estimate",
                     icon=":material/photo_library:")
