"""What to try next, in plain words, from what a finished run measured (metrics.json, events, facts).

Each rule reads a measurement and, when it says the run is weak or unstable, names one thing to do about it.
The Results page shows the sentences above the charts; `python -m tl_core runs` does not need them.
"""
from __future__ import annotations

from ..fit.metrics import most_confused_pair
from ..ops.words import plural

WEAK_OVER_CHANCE = 2.0  # validation accuracy below this many times chance is weak
WEAK_ACCURACY = 0.7  # ... and so is anything below 70 %
GAP = 0.15  # training accuracy this far above validation accuracy: the model learns the images by heart
FEW_VAL_PER_CLASS = 5  # fewer validation images a class than this: one image moves the score a lot


def next_steps(metrics: dict, events: list[dict], facts: dict | None = None) -> list[str]:
    """Sentences, the most important first; [] when nothing measured calls for action."""
    facts = facts or {}
    classes = metrics.get("classes") or []
    accuracy = metrics.get("val_acc")
    if accuracy is None or not classes:
        return []
    steps = []
    epochs = [e for e in events if e.get("event") == "epoch_end"]
    tuned = [e for e in epochs if e.get("phase") == "finetune"]
    if tuned and min(e["val_acc"] for e in tuned) < 1.5 / len(classes):
        steps.append(f"Fine-tuning collapsed (validation accuracy fell to {min(e['val_acc'] for e in tuned):.0%}, "
                     f"chance is {1 / len(classes):.0%}); the weights kept are from before. Train fewer layers or "
                     f"lower the learning rate.")
    chance = 1 / len(classes)
    if accuracy < max(WEAK_ACCURACY, WEAK_OVER_CHANCE * chance):
        pair = most_confused_pair(metrics)
        more = (f"more images of {pair[0]} and {pair[1]}, the pair it mixes up most" if pair else
                "more images of every class")
        steps.append(f"Validation accuracy is {accuracy:.0%} (chance: {chance:.0%}). The most direct help: {more}.")
        if facts.get("features") == "last" and not tuned:
            steps.append("Try multi-layer features (Layers page): images unlike photos often need the early "
                         "layers' edges and textures.")
        if not tuned and metrics.get("n_train", 0) >= 30 * len(classes):
            steps.append("With this many images, fine-tuning the top layer groups may pay: try it on the Layers page.")
    best = next((e for e in epochs if e.get("epoch") == metrics.get("best_epoch")), None)
    if best and best.get("train_acc") is not None and best["train_acc"] - accuracy > GAP:
        steps.append(f"Training accuracy ({best['train_acc']:.0%}) is far above validation ({accuracy:.0%}): the "
                     f"model learns these images by heart. More images help most; light augmentation can too.")
    if metrics.get("validation_method", {}).get("kind") != "cv":
        n_val = metrics.get("n_val") or 0
        if n_val and n_val / len(classes) < FEW_VAL_PER_CLASS:
            steps.append(f"Only {n_val} validation images ({n_val / len(classes):.1f} a class): one image moves the "
                         f"accuracy by {1 / n_val:.0%}. Treat the score as rough, or add images.")
    return steps



def headline(metrics: dict, events: list[dict]) -> str | None:
    """One sentence for the top of the results when the run is weak or unstable, with what to try; None when
    it is neither. The accuracy headlined is the kept epoch's: this says when the curves tell another story."""
    classes = metrics.get("classes") or []
    accuracy = metrics.get("val_acc")
    if accuracy is None or not classes:
        return None
    chance = 1 / len(classes)
    epochs = [e for e in events if e.get("event") == "epoch_end" and e.get("val_acc") is not None]
    tuned = [e for e in epochs if e.get("phase") == "finetune"]
    problems, tries, unstable = [], [], False
    if tuned and min(e["val_acc"] for e in tuned) < 1.5 * chance:
        unstable = True
        problems.append(f"fine-tuning collapsed to {min(e['val_acc'] for e in tuned):.0%} validation accuracy "
                        f"(chance is {chance:.0%}); the {accuracy:.0%} shown is from the weights kept before, "
                        f"at epoch {metrics.get('best_epoch', '?')}")
        tries.append("train fewer layers or lower the learning rate")
    first = epochs[0] if epochs else None
    if first and first.get("train_acc") is not None and first["train_acc"] >= 0.99 \
            and first["train_acc"] - first["val_acc"] > GAP:
        problems.append(f"training accuracy was {first['train_acc']:.0%} from the first epoch against "
                        f"{first['val_acc']:.0%} on validation: it learns these images by heart")
        tries.append("add images (crops as augmentation can help too)")
    if accuracy < max(WEAK_ACCURACY, WEAK_OVER_CHANCE * chance):
        problems.append(f"validation accuracy is {accuracy:.0%} (chance: {chance:.0%})")
        pair = most_confused_pair(metrics)
        tries.append(f"more images of {pair[0]} and {pair[1]}, the pair it mixes up most" if pair
                     else "more images of every class")
    supports = {name: scores.get("support") for name, scores in (metrics.get("per_class") or {}).items()
                if isinstance(scores.get("support"), int)}
    thin = {name: n for name, n in supports.items() if 0 < n < FEW_VAL_PER_CLASS}
    if thin and len(thin) == len(supports):  # no class is weaker than another: the whole set is small
        n = max(thin.values())
        problems.append(f"every class has {'only ' if n == min(thin.values()) else 'at most '}"
                        f"{plural(n, 'validation image')}: one image moves a class's recall by "
                        f"{1 / min(thin.values()):.0%}, so the per-class scores are rough")
        tries.append("more images of every class")
    elif thin:
        name, n = min(thin.items(), key=lambda item: item[1])
        others = f" (and {plural(len(thin) - 1, 'other class')})" if len(thin) > 1 else ""
        problems.append(f"{name}{others} {'have' if len(thin) > 1 else 'has'} only {plural(n, 'validation image')}"
                        f"{' or so' if len(thin) > 1 else ''}: one image moves its recall by {1 / n:.0%}, so its "
                        f"scores are rough")
        tries.append(f"more images of {name}")
    if not problems:
        return None
    # "Handle with care" names a class that really is thinner than the others; a small set as a whole says so
    kind = "Unstable run" if unstable else "Weak result" if accuracy < max(WEAK_ACCURACY, WEAK_OVER_CHANCE * chance) \
        else "Few validation images" if thin and len(thin) == len(supports) else "Handle with care"
    return f"{kind}: {'; '.join(problems)}. Try: {'; '.join(dict.fromkeys(tries))}."
