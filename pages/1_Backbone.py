"""Step 1: choose the pretrained network to start from, and where its weights come from."""
from pathlib import Path

import pandas as pd
import streamlit as st

from pages.ui import common
from tl_core.models import backbones
from tl_core.plan import ranking

state = st.session_state
common.init_state()  # idempotent; makes the page work even when run on its own
st.title("1 · Choose a backbone")
st.write("A backbone is a network already trained on millions of photos (ImageNet). Its layers know edges, "
         "textures and shapes; you will teach only a new last layer (and maybe a few more) your classes.")


@st.cache_data(show_spinner="Checking which weights are on this computer…", ttl=60)
def catalogue_table() -> pd.DataFrame:
    return pd.DataFrame(backbones.catalogue_rows())


def choose_backbone(name: str) -> None:
    state.backbone = name
    offline = name == backbones.EMBEDDED_MODEL
    state.weights = "embedded" if offline else "hub"
    state.weights_source = "embedded" if offline else "hub"
    state.freeze = state.freeze_preset = "auto"  # layer groups differ between backbones


def on_catalogue_select() -> None:
    rows = state.catalogue_table.selection.rows
    if rows:
        choose_backbone(catalogue_table().iloc[rows[0]]["name"])


catalogue = catalogue_table()
st.subheader("Curated backbones")
st.caption("Click a row to choose it; click a column header to sort. Top-1 is ImageNet accuracy, "
           "GMACs the computation per image (lower is faster).")
current_rows = catalogue.index[catalogue["name"] == state.backbone].tolist()
st.dataframe(
    catalogue, key="catalogue_table", on_select=on_catalogue_select, selection_mode="single-row",
    selection_default={"selection": {"rows": current_rows}}, hide_index=True, height=36 * (len(catalogue) + 1) + 4,
    column_order=["name", "offline", "family", "params_m", "gmacs", "top1", "input_size", "note"],
    column_config={
        "name": st.column_config.TextColumn("Backbone", width="large"),
        "offline": st.column_config.CheckboxColumn("Works offline", help="Weights are on this computer"),
        "family": "Family",
        "params_m": st.column_config.NumberColumn("Params (M)", format="%.1f"),
        "gmacs": st.column_config.NumberColumn("GMACs", format="%.2f"),
        "top1": st.column_config.NumberColumn("Top-1 %", format="%.1f"),
        "input_size": st.column_config.NumberColumn("Image size", format="%d px"),
        "note": st.column_config.TextColumn("Why pick it", width="large"),
    },
)

with st.expander("Search all timm models", icon=":material/search:"):
    query = st.text_input("Model name contains", key="model_query", placeholder="e.g. resnet, convnext, vit_small")
    if query:
        found = backbones.search_models(query, limit=100)
        if found:
            picked = st.selectbox(f"{len(found)} models with pretrained weights", found, key="model_search_pick")
            st.button("Use this model", key="use_searched_model", on_click=choose_backbone, args=(picked,))
        else:
            st.warning(f"No timm model with pretrained weights matches '{common.literal(query)}'.")

st.subheader(f"Weights for {common.code(state.backbone)}")
offline = backbones.weights_available_offline(state.backbone)
sources = {"hub": "Download from the Hugging Face hub (needs the internet once; then cached)",
           "upload": "Upload a .safetensors file",
           "none": "No pretrained weights (train from scratch: needs far more images)"}
if state.backbone == backbones.EMBEDDED_MODEL:
    sources = {"embedded": "Embedded: ships with the app, works offline", **sources}
current_source = state.weights if state.weights in sources else "upload"
if state.get("weights_source") not in sources:
    state.weights_source = current_source
source = st.radio("Where the pretrained weights come from", list(sources), key="weights_source",
                  format_func=sources.get)

if source == "upload":
    uploaded = st.file_uploader("Weights file (.safetensors)", type=["safetensors"], key="weights_upload")
    if uploaded is not None:
        saved = state.get("weights_upload_saved")  # (upload id, path): stored once per upload, not every rerun
        if not saved or saved[0] != uploaded.file_id:
            try:  # kept by content: another file of the same name never replaces weights a run already used
                saved = state.weights_upload_saved = (
                    uploaded.file_id, str(backbones.store_uploaded_weights(uploaded.name, uploaded.getvalue())))
            except OSError as error:
                common.show_error(error)
                saved = None
        if saved:
            state.weights = saved[1]
    elif state.weights in ("embedded", "hub", "none"):
        st.info("Upload the weights file to use it.")
else:
    state.weights = source

if state.weights == "embedded" or (state.weights not in ("hub", "none") and Path(state.weights).is_file()):
    st.success(f"Weights available offline: yes ({common.literal(common.weights_label(state.weights))}).",
               icon=":material/check:")
elif state.weights == "hub":
    if offline:
        st.success("Weights available offline: yes (already in the hub cache).", icon=":material/check:")
    else:
        st.warning("Weights available offline: no. They download once from the Hugging Face hub when you "
                   "check them below or start training; without internet, pick the embedded "
                   f"`{backbones.EMBEDDED_MODEL}` or upload a .safetensors file.", icon=":material/cloud_download:")
elif state.weights == "none":
    st.info("Random weights: nothing to download, but expect much lower accuracy on a small dataset.")

if st.button("Check these weights", key="check_weights", icon=":material/fact_check:",
             help="Loads the backbone with these weights now (downloading them if needed), so training will not fail later."):
    with st.spinner(f"Loading {common.literal(state.backbone)} with "
                    f"{common.literal(common.weights_label(state.weights))} weights…"):
        try:
            backbones.create_model(state.backbone, num_classes=2, weights=state.weights)
        except common.USER_ERRORS + (RuntimeError,) as error:
            common.show_error(error)
        else:
            st.success("The weights load: ready to train.", icon=":material/check:")
            catalogue_table.clear()

st.subheader("Which backbone for your images?")
st.caption(f"Each backbone whose weights are here passes up to {ranking.MAX_IMAGES} of your images once; a probe on "
           "its features is cross-validated. That is what feature extraction would reach, beside ImageNet's "
           "Top-1 above. With a single backbone here (offline), its image sizes are compared instead. On this "
           "computer's CPU: about a minute.")
if not state.dataset_dir:
    st.page_link(common.DATA_PAGE, label="Choose your images first (step 2)", icon=":material/photo_library:")
elif st.button("Rank on my images", key="rank_backbones", icon=":material/leaderboard:"):
    bar = st.progress(0.0, text="Starting…")
    try:
        state.ranking = ranking.rank(state.dataset_dir, on_progress=lambda i, n, what: bar.progress(
            i / n, text=f"Features of {what} ({i + 1} of {n})"))
        state.ranking_dataset = state.dataset_dir
    except common.USER_ERRORS + (RuntimeError,) as error:
        common.show_error(error)
    bar.empty()
if state.get("ranking") and state.get("ranking_dataset") == state.dataset_dir:
    st.dataframe([{"backbone": r["backbone"], "weights": common.weights_label(r["weights"]),
                   "image size": r["image_size"], "accuracy on your images": 100 * r["acc"], "seconds": r["seconds"]}
                  for r in state.ranking["rows"]], hide_index=True, key="ranking_table", column_config={
        "accuracy on your images": st.column_config.ProgressColumn(min_value=0.0, max_value=100.0, format="%.1f %%"),
        "seconds": st.column_config.NumberColumn(format="%.1f s")})
    st.caption(common.literal(state.ranking["words"] + "."))

st.divider()
st.page_link(common.DATA_PAGE, label="Next: choose your images", icon=":material/arrow_forward:")
