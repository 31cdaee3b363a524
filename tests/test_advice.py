"""What to try next: each rule speaks when its measurement says so, and stays quiet otherwise."""
import json

from tl_core.use import advice
from tl_core.ops import runs

CLASSES = ["cat", "dog", "fox", "owl"]


def _metrics(val_acc, **extra):
    confusion = [[5, 3, 0, 0], [2, 6, 0, 0], [0, 0, 8, 0], [0, 0, 1, 7]]
    return {"val_acc": val_acc, "classes": CLASSES, "confusion": confusion, "best_epoch": 2, "n_train": 80,
            "n_val": 32, "validation_method": {"kind": "holdout"}, **extra}


def _epoch(epoch, phase, train_acc, val_acc):
    return {"event": "epoch_end", "epoch": epoch, "phase": phase, "train_acc": train_acc, "val_acc": val_acc}


def test_a_strong_stable_run_gets_no_advice():
    events = [_epoch(1, "probe", 0.9, 0.85), _epoch(2, "probe", 0.92, 0.88)]
    assert advice.next_steps(_metrics(0.88), events) == []


def test_a_weak_run_names_the_pair_it_confuses_most():
    events = [_epoch(1, "probe", 0.7, 0.6), _epoch(2, "probe", 0.72, 0.62)]
    steps = advice.next_steps(_metrics(0.62), events, {"features": "last"})
    assert "62%" in steps[0] and "cat and dog" in steps[0]
    assert any("multi-layer features" in s for s in steps)
    assert not any("multi-layer" in s for s in advice.next_steps(_metrics(0.62), events, {"features": "multi-layer"}))


def test_a_collapsed_fine_tune_comes_first():
    events = [_epoch(1, "probe", 0.9, 0.85), _epoch(2, "probe", 0.92, 0.88), _epoch(3, "finetune", 0.3, 0.25),
              _epoch(4, "finetune", 0.25, 0.1)]
    steps = advice.next_steps(_metrics(0.88), events)
    assert steps[0].startswith("Fine-tuning collapsed") and "10%" in steps[0]


def test_learning_by_heart_and_tiny_validation_sets_are_said():
    events = [_epoch(1, "probe", 0.99, 0.7), _epoch(2, "probe", 1.0, 0.75)]
    steps = advice.next_steps(_metrics(0.75, n_val=8), events)
    assert any("by heart" in s and "100%" in s for s in steps)
    assert any("Only 8 validation images" in s for s in steps)
    cv = advice.next_steps(_metrics(0.75, n_val=8, validation_method={"kind": "cv"}), events)
    assert not any("validation images (" in s for s in cv)  # cross-validation scores every image


def test_advice_on_a_real_run_speaks_of_its_own_figures(head_run):
    metrics = runs.read_metrics(head_run)
    events = runs.read_events(head_run)
    steps = advice.next_steps(metrics, events, runs.read_config_record(head_run))
    weak = metrics["val_acc"] < max(advice.WEAK_ACCURACY, advice.WEAK_OVER_CHANCE / len(metrics["classes"]))
    assert any(s.startswith(f"Validation accuracy is {metrics['val_acc']:.0%}") for s in steps) == weak
    json.dumps(steps)  # plain strings, ready for any page
