"""Step 6: use a trained model on new images: the classes it sees, and where it looked."""
from pages.ui import gate  # first: nothing of a page runs before the gate
gate.enter_page()  # also when Streamlit runs this file without app.py (see pages/ui/gate.py)
import streamlit as st

from pages.ui import batch_predict, kinds, models, session, widgets
from pages.ui.text import literal
from tl_core.data.datasets import ImageRefused, open_image

state = st.session_state
session.init_state()  # idempotent; makes the page work even when run on its own

st.title("6 · Predict")
st.write("Give the model images it has never seen: it answers with its most likely classes, and a heat map "
         "shows which parts of the image made it choose the first one.")


def images_given() -> list:
    """The uploads and the webcam picture, decoded at about the size the model needs (a huge photo costs little
    memory); a file that is no image is said and skipped. Stops the page while there is none."""
    upload_tab, webcam_tab = st.tabs([":material/upload: Upload images", ":material/photo_camera: Webcam"],
                                     key="predict_source_tab", on_change="rerun")  # kept across reruns
    with upload_tab:
        uploads = st.file_uploader("Images to classify (or zips of them)", accept_multiple_files=True,
                                   key="predict_uploads", help="PNG, JPEG, WebP, BMP, GIF or TIFF, or a .zip of "
                                   "them; anything else is refused with a reason.")
    with webcam_tab:
        shot = st.camera_input("Take a picture to classify", key="predict_camera")
    files = batch_predict.expand(list(uploads or [])) + ([shot] if shot is not None else [])
    if not files:
        st.info("Upload images or take a picture to see what the model makes of them.",
                icon=":material/image_search:")
        st.stop()
    accepted = []  # (upload, decoded image)
    for upload in files:
        try:
            accepted.append((upload, open_image(upload.getvalue(), name=upload.name,
                                                draft_size=models.EXPLAIN_DRAFT)))
        except ImageRefused as error:
            st.warning(literal(f"{upload.name}: {error.reason}; skipped."), icon=":material/block:")
    return accepted


def task_answers(column, answers: dict) -> None:
    """A multi-task model's answer for every task: its best class, or the tags above their thresholds."""
    for task, answer in answers.items():
        if answer["kind"] == "multi-label":
            tags = ", ".join(f"{t['label']} ({t['prob']:.0%})" for t in answer["tags"]) or "none above threshold"
            column.text(f"{task}: {tags}")
        else:
            best = answer["top"][0]
            column.progress(best["prob"], text=literal(f"{task}: {best['label']} ({best['prob']:.1%})"))


def answer(run_dir, model, upload, image, probs, top_k: int) -> None:
    """One image: its top classes (every task's, for a multi-task model) and the heat map of the first."""
    if model.layout is not None:  # a multi-task model: every task's answer; the heat map explains the first
        answers = model.task_answers(probs, top_k)
        first_task, first = next(iter(answers.items()))
        top = [{**guess, "label": f"{first_task}: {guess['label']}"} for guess in first["top"]]
        st.subheader(literal(upload.name))
    else:
        answers, top = None, model.top(probs, top_k)
        st.subheader(literal(f"{upload.name}: {top[0]['label']} ({top[0]['prob']:.0%})"))
    image_col, heat_col, classes_col = st.columns([1, 1, 2])
    image_col.image(image, caption="the image", width=200)
    with st.spinner("Computing the heat map…"):
        explained = models.explanation(str(run_dir), upload.getvalue(), top[0]["label"], name=upload.name)
    if explained:
        heat_col.image(explained["overlay"], caption=f"where it looked to say {literal(top[0]['label'])}",
                       width=200)
    if answers is not None:
        task_answers(classes_col, answers)
        return
    for rank, guess in enumerate(top):
        classes_col.progress(guess["prob"], text=literal(f"{rank + 1}. {guess['label']}: {guess['prob']:.1%}"))


def classify_images(run_dir) -> None:
    """Each image's most likely classes (every task's answer, for a multi-task model) and its heat map."""
    try:
        model = models.predictor(str(run_dir))
    except Exception as error:  # a damaged model file is this run's problem, shown here, not a crash
        st.error(f"This run's model cannot be loaded: {literal(error)}. Choose another run, or delete this "
                 "one on the Runs page.")
        st.stop()
    if state.get("predict_top_k", 0) > len(model.classes):
        del state["predict_top_k"]  # chosen for a model with more classes
    top_k = st.slider("Classes to show per image", 1, len(model.classes), min(3, len(model.classes)),
                      key="predict_top_k")
    accepted = images_given()
    probabilities = model.predict_images([image for _, image in accepted]) if accepted else []
    unlike = batch_predict.section(run_dir, model, accepted, probabilities)
    for (upload, image), probs, far in zip(accepted[:batch_predict.DETAILED], probabilities, unlike):
        if far:
            st.warning(literal(f"{upload.name}: looks like none of the classes; its answer below is a guess."),
                       icon=":material/help:")
        answer(run_dir, model, upload, image, probs, top_k)


run_dir = widgets.pick_finished_run("predict_run")
if (kind_predict := kinds.section(kinds.of_run(run_dir), "predict")) is not None:
    kind_predict(run_dir)
else:
    classify_images(run_dir)
