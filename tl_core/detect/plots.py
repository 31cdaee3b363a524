"""What the app shows of a detector, built here so pages only place it: plotly figures (loss terms, mAP per
epoch, PR curves, per-class AP, the confusion with background, the audit's counts and box sizes) and pictures
with boxes drawn (predicted in class colours, true ones in white), the validation gallery worst first."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from PIL import Image, ImageDraw

from tl_core.ops.runs import RunFolder, read_events
from tl_core.ops.storage import read_json

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990"]
TRUTH = "#ffffff"
LOSS_TERMS = {"train_loss": "total", "train_classification": "classification (focal)", "train_box": "box (GIoU)",
              "train_ctrness": "centre-ness"}


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def epochs(run_dir: str | Path) -> list[dict]:
    """The run's epoch_end events so far."""
    return [e for e in read_events(Path(run_dir)) if e.get("event") == "epoch_end"]


def loss_figure(epoch_events: list[dict]) -> go.Figure:
    """Training loss per epoch: the total and its classification, box and centre-ness terms."""
    figure = go.Figure()
    x = [e["epoch"] for e in epoch_events]
    for key, name in LOSS_TERMS.items():
        figure.add_scatter(x=x, y=[e.get(key) for e in epoch_events], name=name, mode="lines+markers")
    figure.update_layout(title="Training loss", xaxis_title="epoch", yaxis_title="loss", height=320,
                         margin=dict(l=40, r=10, t=40, b=40))
    return figure


def map_figure(epoch_events: list[dict]) -> go.Figure:
    """Validation mAP@50 and mAP@[.5:.95] per epoch."""
    figure = go.Figure()
    x = [e["epoch"] for e in epoch_events]
    figure.add_scatter(x=x, y=[e.get("val_map50") for e in epoch_events], name="mAP@50", mode="lines+markers")
    figure.add_scatter(x=x, y=[e.get("val_map") for e in epoch_events], name="mAP@[.5:.95]", mode="lines+markers")
    figure.update_layout(title="Validation mAP", xaxis_title="epoch", yaxis=dict(range=[0, 1]), height=320,
                         margin=dict(l=40, r=10, t=40, b=40))
    return figure


def pr_figure(metrics: dict) -> go.Figure:
    """Precision against recall at IoU 0.5, one curve per class."""
    figure = go.Figure()
    for k, (name, curve) in enumerate((metrics.get("pr_curves") or {}).items()):
        figure.add_scatter(x=curve["recall"], y=curve["precision"], name=name, mode="lines",
                           line=dict(color=colour(metrics["classes"].index(name) if name in metrics["classes"] else k)))
    figure.update_layout(title="Precision–recall (IoU 0.5)", xaxis_title="recall", yaxis_title="precision",
                         xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.02]), height=360)
    return figure


def per_class_figure(metrics: dict) -> go.Figure:
    """AP@50 and AP@[.5:.95] per class."""
    rows = metrics.get("per_class") or {}
    names = list(rows)
    figure = go.Figure()
    figure.add_bar(x=names, y=[rows[n].get("ap50") or 0 for n in names], name="AP@50")
    figure.add_bar(x=names, y=[rows[n].get("ap") or 0 for n in names], name="AP@[.5:.95]")
    figure.update_layout(title="AP per class", yaxis=dict(range=[0, 1]), barmode="group", height=320)
    return figure


def confusion_figure(metrics: dict) -> go.Figure:
    """Rows the truth, columns the prediction; the background row holds false alarms, its column missed objects."""
    labels = metrics.get("confusion_labels") or []
    table = metrics.get("box_confusion") or []
    figure = go.Figure(go.Heatmap(z=table, x=labels, y=labels, colorscale="Blues", text=table,
                                  texttemplate="%{text}", showscale=False))
    figure.update_layout(title=f"Confusion (IoU ≥ {metrics.get('confusion_iou', 0.5)}, score ≥ "
                               f"{metrics.get('confusion_score', 0.3)})", xaxis_title="predicted",
                         yaxis_title="true", yaxis=dict(autorange="reversed"), height=360)
    return figure


def class_counts_figure(report: dict) -> go.Figure:
    counts = report.get("class_counts") or {}
    figure = go.Figure(go.Bar(x=list(counts), y=list(counts.values())))
    figure.update_layout(title="Boxes per class", height=300)
    return figure


def box_size_figure(report: dict) -> go.Figure:
    """The histogram of box sizes (square root of the area) at the model's input size."""
    bins = report.get("size_histogram") or []
    figure = go.Figure(go.Bar(x=[b["bin"] for b in bins], y=[b["count"] for b in bins]))
    figure.update_layout(title=f"Box sizes at the {report.get('image_size')} px input", height=300,
                         xaxis_title="√(width × height)")
    return figure


def draw_boxes(picture: Image.Image, boxes: list[dict], classes: list[str], true_boxes: list[dict] = ()) -> Image.Image:
    """A copy of `picture` with true boxes (white) and predicted ones ({"label", "score", "box"}) drawn."""
    canvas = picture.convert("RGB").copy()
    scale = max(1, round(max(canvas.size) / 200))
    if max(canvas.size) < 320:  # small pictures: drawn larger so the labels can be read
        factor = 320 / max(canvas.size)
        canvas = canvas.resize((round(canvas.width * factor), round(canvas.height * factor)))
    else:
        factor = 1.0
    pen = ImageDraw.Draw(canvas)
    for item in true_boxes:
        pen.rectangle([v * factor for v in item["box"]], outline=TRUTH, width=scale)
    for item in boxes:
        hue = colour(classes.index(item["label"]) if item["label"] in classes else 0)
        x0, y0 = item["box"][0] * factor, item["box"][1] * factor
        pen.rectangle([v * factor for v in item["box"]], outline=hue, width=scale + 1)
        text = f"{item['label']} {item['score']:.2f}" if "score" in item else item["label"]
        pen.text((x0 + 2, max(0, y0 - 11)), text, fill=hue)
    return canvas


def gallery(run_dir: str | Path, score_threshold: float = 0.3, limit: int = 12) -> list[dict]:
    """The validation pictures, worst first (most missed, wrong or extra boxes at `score_threshold`):
    [{"file", "wrong", "image": picture with true and predicted boxes}]."""
    from tl_core.detect.evaluate import per_image_errors

    classes, rows, predictions, targets = _saved_detections(run_dir)
    errors = per_image_errors(predictions, targets, score_threshold)
    order = sorted(range(len(rows)), key=lambda i: -errors[i]["wrong"])[:limit]
    shown = []
    for i in order:
        row = rows[i]
        try:
            picture = Image.open(row["path"]).convert("RGB")
        except OSError:
            continue
        predicted = [{"label": classes[k], "score": s, "box": b} for b, s, k in
                     zip(row["boxes"], row["scores"], row["labels"]) if s >= score_threshold]
        truth = [{"label": classes[k], "box": b} for b, k in zip(row["true_boxes"], row["true_labels"])]
        shown.append({"file": row["file"], "wrong": errors[i]["wrong"],
                      "image": draw_boxes(picture, predicted, classes, truth)})
    return shown


def confusion_at(run_dir: str | Path, score_threshold: float) -> dict:
    """The confusion with background recomputed from the saved validation detections at another score."""
    from tl_core.detect.evaluate import BACKGROUND, confusion_with_background

    classes, _, predictions, targets = _saved_detections(run_dir)
    return {"classes": classes, "confusion_labels": [*classes, BACKGROUND], "confusion_score": score_threshold,
            "box_confusion": confusion_with_background(predictions, targets, len(classes), score_threshold)}


def _saved_detections(run_dir: str | Path) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    """(classes, rows, predictions, targets) of the validation detections a run saved, in torchvision's form."""
    import torch

    record = read_json(RunFolder(run_dir).detections) or {}
    rows = record.get("images", [])
    predictions = [{"boxes": torch.tensor(r["boxes"]).reshape(-1, 4), "scores": torch.tensor(r["scores"]),
                    "labels": torch.tensor(r["labels"], dtype=torch.int64)} for r in rows]
    targets = [{"boxes": torch.tensor(r["true_boxes"]).reshape(-1, 4),
                "labels": torch.tensor(r["true_labels"], dtype=torch.int64)} for r in rows]
    return record.get("classes", []), rows, predictions, targets
