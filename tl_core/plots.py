"""Plotly figures built from a run's events and metrics; plain data in, figures out, no browser needed.

Names a user chose (classes, runs) are escaped: Plotly draws text as a subset of HTML, links included.
Events and metrics may come from a damaged file: rows without the numbers a figure needs are left out.
"""
from __future__ import annotations

import html
import numbers

import plotly.graph_objects as go

PHASE_NAMES = {"probe": "head on frozen features", "finetune": "fine-tune"}
_TITLE_ROOM, _LEGEND_ROW = 64, 24  # px: a title clear of the toolbar Streamlit draws at the top right; a legend row


def _layout(title: str, legend_rows: int = 1, height: int = 320) -> dict:
    """Title top left, above the plot and clear of the toolbar; the legend below the x axis with a margin that
    holds `legend_rows` rows (names wrap in a narrow column), so neither is cut off."""
    bottom = 56 + _LEGEND_ROW * legend_rows  # the axis title, then the legend's rows
    height += _LEGEND_ROW * max(legend_rows - 1, 0)  # the plot keeps its size as the legend grows
    return dict(title=dict(text=title, x=0, xanchor="left", xref="container", y=1, yanchor="top",
                           yref="container", pad=dict(t=10, l=8)),
                margin=dict(l=40, r=10, t=_TITLE_ROOM, b=bottom), height=height,
                legend=dict(orientation="h", x=0, xanchor="left", y=-56 / (height - _TITLE_ROOM - bottom),
                            yanchor="top"))


def label(name) -> str:
    """A user's name as literal text in a figure (Plotly reads "<a href=...>" in text as a link)."""
    return html.escape(str(name), quote=False)


def epoch_rows(events: list[dict], *needed: str) -> list[dict]:
    """The epoch_end events that hold a number for "epoch" and each of `needed`."""
    return [e for e in events if e.get("event") == "epoch_end" and all(_number(e.get(k)) for k in ("epoch", *needed))]


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def loss_figure(events: list[dict]) -> go.Figure:
    """Training and validation loss per epoch, with the loss of every fine-tune batch behind them."""
    fig = go.Figure()
    batches = [e for e in events if e.get("event") == "batch_end"
               and all(_number(e.get(k)) for k in ("loss", "epoch", "batch"))]
    if batches:
        per_epoch = {e["epoch"]: e.get("batches") if _number(e.get("batches")) and e["batches"] else 1
                     for e in batches}
        x = [e["epoch"] - 1 + e["batch"] / per_epoch[e["epoch"]] for e in batches]
        fig.add_scatter(x=x, y=[e["loss"] for e in batches], name="batch loss", mode="lines",
                        line=dict(width=1, color="rgba(120,120,120,0.45)"))
    epochs = epoch_rows(events, "train_loss", "val_loss")
    fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["train_loss"] for e in epochs], name="train loss",
                    mode="lines+markers")
    fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["val_loss"] for e in epochs], name="validation loss",
                    mode="lines+markers")
    _mark_phases(fig, epochs)
    fig.update_layout(xaxis_title="epoch", yaxis_title="cross-entropy", **_layout("Loss"))
    return fig


def accuracy_figure(events: list[dict]) -> go.Figure:
    """Training and validation accuracy per epoch."""
    epochs = epoch_rows(events, "train_acc", "val_acc")
    fig = go.Figure()
    fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["train_acc"] for e in epochs], name="train accuracy",
                    mode="lines+markers")
    fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e["val_acc"] for e in epochs], name="validation accuracy",
                    mode="lines+markers")
    _mark_phases(fig, epochs)
    fig.update_layout(xaxis_title="epoch", yaxis=dict(tickformat=".0%", range=[0, 1.02]), **_layout("Accuracy"))
    return fig


def compare_figure(runs: dict[str, list[dict]], metric: str = "val_acc") -> go.Figure:
    """One line per run of an epoch metric, overlaid, for comparing runs."""
    fig = go.Figure()
    for name, events in runs.items():
        epochs = epoch_rows(events, metric)
        fig.add_scatter(x=[e["epoch"] for e in epochs], y=[e[metric] for e in epochs], name=label(name),
                        mode="lines+markers")
    title = {"val_acc": "Validation accuracy", "val_loss": "Validation loss",
             "train_loss": "Training loss", "train_acc": "Training accuracy"}.get(metric, metric)
    fig.update_layout(xaxis_title="epoch", **_layout(title, legend_rows=max(len(runs), 1)))
    if metric.endswith("acc"):
        fig.update_yaxes(tickformat=".0%")
    return fig


def confusion_figure(metrics: dict) -> go.Figure:
    """The confusion matrix: rows the true class, columns the predicted one."""
    classes = [label(name) for name in metrics["classes"]]
    matrix = metrics["confusion"]
    fig = go.Figure(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Blues", showscale=False,
                               text=matrix, texttemplate="%{text}",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis=dict(autorange="reversed"),
                      **{**_layout("Confusion matrix", legend_rows=0), "height": 150 + 32 * len(classes)})
    return fig


def counts_figure(counts: dict[str, int]) -> go.Figure:
    """Images per class as bars."""
    fig = go.Figure(go.Bar(x=[label(name) for name in counts], y=list(counts.values()), text=list(counts.values()),
                           textposition="outside"))
    fig.update_layout(yaxis_title="images", **_layout("Images per class", legend_rows=0, height=300))
    return fig


def _mark_phases(fig: go.Figure, epochs: list[dict]) -> None:
    """A dotted line where fine-tuning starts after the head was fitted on frozen features."""
    for before, after in zip(epochs, epochs[1:]):  # epochs: rows epoch_rows() kept
        if before.get("phase") == "probe" and after.get("phase") == "finetune":
            fig.add_vline(x=before["epoch"] + 0.5, line_dash="dot", line_color="grey",
                          annotation_text="fine-tune starts", annotation_position="top left")


def reliability_figure(table: list[dict]) -> go.Figure:
    """Accuracy against confidence per bin, beside the diagonal of perfect calibration."""
    rows = [r for r in table if r["count"]]
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                    line=dict(dash="dot", color="grey"))
    fig.add_scatter(x=[r["confidence"] for r in rows], y=[r["accuracy"] for r in rows], mode="lines+markers",
                    name="this model", text=[f"{r['count']} images" for r in rows],
                    hovertemplate="confidence %{x:.0%}<br>right %{y:.0%}<br>%{text}<extra></extra>")
    fig.update_layout(xaxis_title="confidence", yaxis_title="accuracy", xaxis=dict(tickformat=".0%", range=[0, 1]),
                      yaxis=dict(tickformat=".0%", range=[0, 1.02]),
                      **_layout("Reliability: is it right as often as it is sure?"))
    return fig


def plan_figure(plan: dict) -> go.Figure:
    """The Auto plan's measurement: estimated accuracy against how many layer groups learn (0: the head only).
    Each candidate is the last-layer probe's accuracy plus its measured gain; skipped ones are not drawn."""
    base = plan.get("last_layer_acc") or 0.0
    fig = go.Figure()
    rows = [r for r in plan.get("rows", []) if not r.get("skipped") and _number(r.get("gain"))]
    chosen = (plan.get("chosen") or {}).get("plan")
    labels = [("head, multi-layer" if r.get("features") == "multi-layer" else "head") if r["plan"] == "head"
              else r["plan"] for r in rows]
    fig.add_scatter(x=[r["groups"] for r in rows], y=[base + r["gain"] for r in rows], mode="markers+text",
                    text=labels, textposition="top center", name="measured",
                    error_y=dict(type="data", array=[r.get("gain_se") or 0 for r in rows], visible=True),
                    marker=dict(size=[16 if r["plan"] == chosen else 9 for r in rows],
                                symbol=["star" if r["plan"] == chosen else "circle" for r in rows]))
    if rows:
        fig.add_hline(y=base, line_dash="dot", annotation_text="last-layer probe", line_color="gray")
    # Axes that mean something: whole layer-group counts over every candidate (measured or not), and
    # accuracies within 0–100 %, a little room around the points.
    widest = max([r.get("groups", 0) for r in plan.get("rows", []) if _number(r.get("groups"))] or [0])
    accuracies = [base + r["gain"] + sign * (r.get("gain_se") or 0) for r in rows for sign in (-1, 1)] + [base]
    low, high = max(0.0, min(accuracies) - 0.05), min(1.0, max(accuracies) + 0.05)
    fig.update_layout(xaxis=dict(title="layer groups that learn (0: the head only)", dtick=1,
                                 range=[-0.5, max(widest, 1) + 0.5]),
                      yaxis=dict(title="estimated accuracy", tickformat=".0%", range=[low, max(high, low + 0.05)]),
                      showlegend=False, **_layout("Which layers should learn? Measured on your images", legend_rows=0))
    return fig


def plan_is_chart(plan: dict) -> bool:
    """Whether the Auto plan measured two candidates or more: one point is a sentence, not a chart."""
    return len([r for r in plan.get("rows", []) if not r.get("skipped") and _number(r.get("gain"))]) >= 2


def task_figure(events: list[dict]) -> go.Figure:
    """A multi-task run's validation score per task and epoch (accuracy, or mAP for multi-label tasks)."""
    epochs = [e for e in epoch_rows(events) if isinstance(e.get("tasks"), dict)]
    names = list(dict.fromkeys(name for e in epochs for name in e["tasks"]))
    fig = go.Figure()
    for name in names:
        points = [(e["epoch"], e["tasks"][name].get("val_score")) for e in epochs
                  if isinstance(e["tasks"].get(name), dict) and _number(e["tasks"][name].get("val_score"))]
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=label(name), mode="lines+markers")
    _mark_phases(fig, epochs)
    fig.update_layout(xaxis_title="epoch", yaxis_title="accuracy or mAP",
                      **_layout("Validation score per task", legend_rows=max(1, (len(names) + 2) // 3)))
    return fig
