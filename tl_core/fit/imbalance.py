"""Class imbalance, acted on: whether a run weights its classes, by how much, and the sentence that says so.

With 10 times more images of one class, a plain loss is mostly about that class and the model leans
toward it. Weighting each image by 1/(its class's count) makes every class count the same in the
loss; the probe (tl_core.fit.probe.HeadFits) and fine-tuning (tl_core.fit.tasks.Classification) both use it.
"""
from __future__ import annotations

# "auto" weights the classes when the largest has at least this many times the smallest's images: below it,
# the lean toward the big classes is small and weighting only adds variance to the small classes' gradients.
AUTO_FROM_RATIO = 3.0
NOTICE_FROM_RATIO = 1.5  # a balanced set gets no sentence: nothing was done and nothing needed to be


def class_weighting(setting: str, counts: list[int]) -> dict:
    """{"on", "weights" (one a class, mean 1 over the images; None when off), "ratio", "words", "notice"}.

    `setting` is RunConfig.class_weights: "on", "off", or "auto" (on from AUTO_FROM_RATIO). `notice` says
    whether the sentence is worth an event (weighting on, or a real imbalance left alone)."""
    present = [n for n in counts if n > 0]
    ratio = max(present) / min(present) if present else 1.0
    on = setting == "on" or (setting == "auto" and ratio >= AUTO_FROM_RATIO)
    shown = f"{round(ratio, 1):g}×"
    lean = f"the largest class has {shown} the smallest's images"
    if on:
        words = f"classes weighted by 1/count{', as asked' if setting == 'on' else ''}: {lean}"
    elif setting == "off":
        words = f"classes not weighted, as asked: {lean}" + (
            "; the model will lean toward the bigger classes" if ratio >= AUTO_FROM_RATIO else "")
    else:
        words = f"classes not weighted: {lean} (weighting starts at {AUTO_FROM_RATIO:g}×)"
    weights = None
    if on:
        total, kinds = sum(present), len(present)
        weights = [total / (kinds * n) if n > 0 else 1.0 for n in counts]
    return {"on": on, "weights": weights, "ratio": ratio, "words": words,
            "notice": on or ratio >= NOTICE_FROM_RATIO}
