"""Step 1: choose the pretrained network to start from, and where its weights come from."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
import pandas as pd
import streamlit as st

from pages.ui import labels, nav, session, weights, widgets
from pages.ui.text import literal
from tl_core.models import backbones
from tl_core.plan import ranking

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own
st.title("1 · Choose a backbone")
st.write("A backbone is a network already trained on millions of photos (ImageNet). Its layers know edges, "
         "textures and shapes; you will teach only a new last layer (and maybe a few more) your classes.")


@st.cache_data(show_spinner="Checking which weights are on this computer…", ttl=60)
def catalogue_table() -> pd.DataFrame:
    """The curated backbones, with whether their weights are on this computer (checked once a minute)."""
    return pd.DataFrame(backbones.catalogue_rows())


def choose_backbone(name: str) -> None:
    """Make `name` the next run's backbone, with its default weights and the Auto plan."""
    state.backbone = name
    offline = name == backbones.EMBEDDED_MODEL
    state.weights = "embedded" if offline else "hub"
    state.weights_source = "embedded" if offline else "hub"
    state.freeze = state.freeze_preset = "auto"  # layer groups differ between backbones


def on_catalogue_select() -> None:
    """A click on a catalogue row chooses that backbone."""
    rows = state.catalogue_table.selection.rows
    if rows:
        choose_backbone(catalogue_table().iloc[rows[0]]["name"])


def catalogue_section() -> None:
    """The curated backbones (a click chooses one), and a search of every timm model."""
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
            "name": st.column_config.TextColumn("Backbone", width="medium"),
            "offline": st.column_config.CheckboxColumn("Offline", help="Works offline: the weights are on this "
                                                                       "computer"),
            "family": "Family",
            "params_m": st.column_config.NumberColumn("Params (M)", format="%.1f"),
            "gmacs": st.column_config.NumberColumn("GMACs", format="%.2f"),
            "top1": st.column_config.NumberColumn("Top-1 %", format="%.1f"),
            "input_size": st.column_config.NumberColumn("Size", format="%d px", help="Input image size"),
            "note": st.column_config.TextColumn("Why pick it", width="large"),
        },
    )
    if current_rows:  # a long note is cut in its cell: the chosen backbone's is said in full
        st.caption(f"Why pick {catalogue.loc[current_rows[0], 'name']}: {catalogue.loc[current_rows[0], 'note']}")

    with st.expander("Search all timm models", icon=":material/search:"):
        query = st.text_input("Model name contains", key="model_query", placeholder="e.g. resnet, convnext, vit_small")
        if query:
            found = backbones.search_models(query, limit=100)
            if found:
                picked = st.selectbox(f"{len(found)} models with pretrained weights", found, key="model_search_pick")
                st.button("Use this model", key="use_searched_model", on_click=choose_backbone, args=(picked,))
            else:
                st.warning(f"No timm model with pretrained weights matches '{literal(query)}'.")


def ranking_section() -> None:
    """Every backbone here (or image size) ranked by a probe on the user's own images."""
    st.subheader("Which backbone for your images?")
    st.caption(f"Each backbone whose weights are here passes up to {ranking.MAX_IMAGES} of your images once; a "
               "probe on its features is cross-validated. That is what feature extraction would reach, beside "
               "ImageNet's Top-1 above. With a single backbone here (offline), its image sizes are compared instead. "
               "On this computer's CPU: about a minute.")
    if not state.dataset_dir:
        st.page_link(nav.DATA_PAGE, label="Choose your images first (step 2)", icon=":material/photo_library:")
    elif st.button("Rank on my images", key="rank_backbones", icon=":material/leaderboard:"):
        bar = st.progress(0.0, text="Starting…")
        try:
            state.ranking = ranking.rank(state.dataset_dir, on_progress=lambda i, n, what: bar.progress(
                i / n, text=f"Features of {what} ({i + 1} of {n})"))
            state.ranking_dataset = state.dataset_dir
        except widgets.USER_ERRORS + (RuntimeError,) as error:
            widgets.show_error(error)
        bar.empty()
    if state.get("ranking") and state.get("ranking_dataset") == state.dataset_dir:
        rows = [{"backbone": r["backbone"], "weights": labels.weights_label(r["weights"]),
                 "image size": r["image_size"], "accuracy on your images": 100 * r["acc"], "seconds": r["seconds"]}
                for r in state.ranking["rows"]]
        st.dataframe(rows, hide_index=True, key="ranking_table", column_config={
            "accuracy on your images": st.column_config.ProgressColumn(min_value=0.0, max_value=100.0,
                                                                       format="%.1f %%"),
            "seconds": st.column_config.NumberColumn(format="%.1f s")})
        st.caption(literal(state.ranking["words"] + "."))


catalogue_section()
weights.source_section()
weights.check_section(on_loaded=catalogue_table.clear)  # the catalogue's "works offline" column changed
ranking_section()

st.divider()
st.page_link(nav.DATA_PAGE, label="Next: choose your images", icon=":material/arrow_forward:")
