"""Plotly figures of an anomaly run, built here so the pages only show them: scores, ROC."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go


def score_histogram(scores, anomalous, threshold: float) -> go.Figure:
    """Scores of good images against defects, with the threshold as a line."""
    scores, anomalous = np.asarray(scores, float), np.asarray(anomalous, bool)
    fig = go.Figure()
    fig.add_histogram(x=scores[~anomalous], name="good", opacity=0.65, marker_color="#2a9d8f", nbinsx=30)
    if anomalous.any():
        fig.add_histogram(x=scores[anomalous], name="defect", opacity=0.65, marker_color="#e76f51", nbinsx=30)
    fig.add_vline(x=threshold, line_dash="dash", annotation_text="threshold")
    fig.update_layout(barmode="overlay", title="Anomaly scores", xaxis_title="score (distance to the nearest "
                      "good patch)", yaxis_title="images", height=320, margin=dict(t=40, b=40, l=40, r=10))
    return fig


def roc_figure(scores, anomalous, threshold: float | None = None) -> go.Figure:
    """ROC curve of defects against good images, its AUROC in the title, the threshold's point marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, anomalous = np.asarray(scores, float), np.asarray(anomalous, bool)
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance")
    title = "ROC: needs good and defect images"
    if 0 < anomalous.sum() < len(anomalous):
        fpr, tpr, _ = roc_curve(anomalous, scores)
        fig.add_scatter(x=fpr, y=tpr, mode="lines", name="this model")
        title = f"ROC · AUROC {roc_auc_score(anomalous, scores):.3f}"
        if threshold is not None:
            flagged = scores >= threshold
            fig.add_scatter(x=[flagged[~anomalous].mean()], y=[flagged[anomalous].mean()], mode="markers",
                            marker=dict(size=11, color="#e76f51"), name="at the threshold")
    fig.update_layout(title=title, xaxis_title="false-alarm rate (good images flagged)",
                      yaxis_title="defects caught", height=320, margin=dict(t=40, b=40, l=40, r=10))
    return fig
