"""The Auto plan: which layers should learn, answered by the user's own images within a time budget.

A run with freeze="auto" first measures candidate plans, each a complete small run of its own in
<run>/candidates/<plan>/ (same images, same seed):
- "head": feature extraction; the probe picks last-layer or multi-layer features by cross-validation.
  Always measured: it costs one pass of the backbone over the images.
- "top-1", "top-2", "top-4", "all": the same probe (last-layer or multi-layer features, chosen the same
  way), then fine-tuning of that many layer groups with that head attached, on a held-out split, measured
  cheapest first while the estimated time fits the budget (`auto_budget` × the head candidate's own time).
Every candidate is scored as its gain over the last-layer probe: the multi-layer features' cross-validated
gain; for a fine-tune, the gain of the probe it started from plus what fine-tuning added to that probe on
its held-out images (paired: the same images). The simplest candidate is kept unless a more complex one gains more than the
noise of its validation set (callbacks.NOISE_SE standard errors). The run then trains the plan kept,
from the caches the candidates filled; plan.json holds the measurement and the sentence saying why.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from ..config import RunConfig, recommended_lr
from ..fit.callbacks import NOISE_SE, Callback, EventLog, StopFile
from ..fit.loop import Fit, standard_callbacks
from ..ops.filecache import folder_stamp, keyed_on
from ..ops.runs import RunFolder, create_run, read_config_record, read_plan, write_plan

FINETUNE_TOPS = (1, 2, 4)  # then "all"
FINETUNE_EPOCHS = 5
# Fewer held-out images than this and a fine-tune's gain is noise (one image is 10 points or more).
MIN_HELD_OUT = 10


def resolve(config: RunConfig, run_dir: Path, notice) -> RunConfig:
    """Measure the candidates, write plan.json, and return the config of the plan kept (`notice(text)` says
    what happens, for the run's event log)."""
    from ..models import layers
    from . import plan_cost
    from ..models import multilayer
    from ..models.backbones import architecture_for, create_model

    run_dir = Path(run_dir)
    root = RunFolder(run_dir).candidates
    t0 = time.time()
    notice("Auto plan: measuring feature extraction on your images")
    head = _measure(config.replace(freeze="head", features="auto", lr=None), root / "head", run_dir, notice=notice)
    budget_s = config.auto_budget * head["seconds"]
    rows = [head]
    model = create_model(architecture_for(config.backbone, config.weights), len(head["classes"]), weights="none")
    groups = layers.layer_groups(model)
    # Fine-tune candidates' probes choose as the head candidate's did; multi-layer ones run the whole body.
    features = head.get("features", "last") if multilayer.supports(model) else "last"
    n_train = head["n_images"] - round(head["n_images"] * config.val_fraction)
    size = head["image_size"]
    plans = [f"top-{k}" for k in FINETUNE_TOPS if k < len(groups) - 1] + ["all"]
    n_val = head["n_images"] - n_train
    too_few = head["smallest_class"] < 2 or n_val < MIN_HELD_OUT
    for plan in plans:
        trainable = layers.parse_freeze(plan, groups)
        if too_few:
            rows.append({"plan": plan, "groups": len(trainable) - 1, "skipped": True,
                         "why": f"too few images to measure a fine-tune: {n_val} would be held out"})
            continue
        cost = plan_cost.estimate(model, size, trainable, config.bn_policy, n_train, n_val, features=features)
        estimate = head["seconds"] * 0.5 + cost["once_s"] + FINETUNE_EPOCHS * cost["epoch_s"]
        spent = time.time() - t0
        if spent + estimate > budget_s:
            rows.append({"plan": plan, "groups": len(trainable) - 1, "skipped": True, "estimate_s": estimate,
                         "why": f"about {estimate:.0f} s, beyond what is left of the budget"})
            continue
        notice(f"Auto plan: measuring fine-tuning with {plan} (about {estimate:.0f} s)")
        rows.append(_measure(config.replace(freeze=plan, features="auto", epochs=FINETUNE_EPOCHS, lr=None,
                                            augment="none"), root / plan, run_dir, deadline=t0 + budget_s,
                             head=head, notice=notice))
    chosen, words = _choose(rows)
    measured = {"rows": rows, "chosen": chosen, "words": words, "budget_s": budget_s,
                "seconds": time.time() - t0, "last_layer_acc": head["last_acc"]}
    write_plan(run_dir, measured)
    notice(f"Auto plan: {words}")
    lr = config.lr if config.lr != recommended_lr("auto") else recommended_lr(chosen["plan"])
    # features="auto" for every plan: the probe's choice is repeated in a second on the cached features,
    # and a fine-tune starts from that probe (tl_core.fit.state).
    return config.replace(freeze=chosen["plan"], features="auto", lr=lr,
                          epochs=config.epochs if chosen["plan"] == "head" else FINETUNE_EPOCHS)


class PlanProgress(Callback):
    """Relays a candidate's progress to the run's own event log as plan notices (with `fraction` and
    `eta_s`), at most twice a second, so the live view is not an empty bar while the plan measures."""

    def __init__(self, notice, plan: str, every_s: float = 0.5):
        self.notice, self.plan, self.every_s = notice, plan, every_s
        self.start, self.said, self.epochs = time.time(), 0.0, 0

    def _say(self, what: str, fraction: float) -> None:
        now = time.time()
        if now - self.said < self.every_s and fraction < 1.0:
            return
        self.said = now
        elapsed = now - self.start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.02 else None
        self.notice(f"Auto plan, measuring {_measuring(self.plan)}: {what}", fraction=round(fraction, 3),
                    eta_s=None if eta is None else round(eta, 1))

    def on_fit_start(self, info, fit):
        self.epochs = info.get("epochs") or 0

    def on_batch_end(self, info, fit):
        if info.get("phase") == "features" and info.get("total"):
            self._say(f"features of {info.get('done', 0)} of {info['total']} images",
                      min(info.get("done", 0) / info["total"], 1.0))
        elif info.get("batches") and info.get("epoch") and self.epochs:
            done = (info["epoch"] - 1 + info["batch"] / info["batches"]) / self.epochs
            self._say(f"epoch {info['epoch']} of {self.epochs}", min(done, 1.0))


def _measuring(plan: str) -> str:
    return "feature extraction" if plan == "head" else f"fine-tuning {plan}"


class Deadline(Callback):
    """Ends a candidate's phase after the epoch in which the budget ran out (an estimate can be wrong)."""

    def __init__(self, deadline: float):
        self.deadline, self.cut = deadline, False

    def on_epoch_end(self, info, fit):
        if time.time() > self.deadline:
            fit.stop_phase = self.cut = True


def _measure(config: RunConfig, candidate_dir: Path, run_dir: Path, deadline: float = math.inf,
             head: dict | None = None, notice=None) -> dict:
    """Train one candidate in its own folder; its scores relative to the last-layer probe (`head`: the head
    candidate's row, whose probe a fine-tune candidate's probe repeats; `notice`, when given, hears its
    progress)."""
    start, stop = time.time(), Deadline(deadline)
    create_run(config.replace(name=f"auto plan candidate {config.freeze}"), run_dir=candidate_dir)
    relay = [PlanProgress(notice, config.freeze)] if notice is not None else []
    fit = Fit(config, candidate_dir, [EventLog.for_run(candidate_dir), StopFile(run_dir),
                                      *standard_callbacks(config), stop, *relay])
    metrics = fit.run()
    facts = read_config_record(candidate_dir)
    row = {"plan": config.freeze, "groups": len(fit.net.trainable) - 1, "seconds": time.time() - start,
           "n_images": len(fit.paths), "n_val": len(fit.val_idx),
           "smallest_class": min(fit.labels.bincount(minlength=len(fit.classes)).tolist()), "image_size": fit.net.size, "classes": fit.classes,
           "val_acc": metrics["val_acc"], "validation": metrics["validation"], "cut_by_budget": stop.cut}
    if config.freeze == "head":
        choice = facts.get("features_choice")
        row["features"] = facts.get("features", "last")
        row["last_acc"] = choice["scores"]["last"]["acc"] if choice else metrics["val_acc"]
        row["gain"] = choice["gain"] if choice and row["features"] == "multi-layer" else 0.0
        row["gain_se"] = choice["gain_se"] if choice else 0.0
        return row
    by_phase = fit.best["by_phase"]
    # The probe fine-tuning was judged against, on the same held-out images (a kept probe is refitted after).
    probe, tuned = by_phase.get("held_out_probe") or by_phase.get("probe"), by_phase.get("finetune")
    row["features"] = fit.net.feature_kind
    row["probe_acc"] = probe["val_acc"] if probe else None
    row["finetune_acc"] = tuned["val_acc"] if tuned else None
    # Against the higher of that probe and the default's own probe on the same images (Fit.set_probe_bar).
    bar = max(probe["val_acc"], facts.get("probe_bar") or 0.0) if probe else None
    row["probe_bar"] = facts.get("probe_bar")
    row["gain_over_probe"] = (tuned["val_acc"] - bar) if probe and tuned else None
    # The probe's own gain over the last layer, in the head candidate's frame (cross-validated) when both
    # probes read the same features, so that a fine-tune is chosen only for what it adds beyond that probe.
    choice = facts.get("features_choice")
    if head is not None and head.get("features") == row["features"]:
        probe_gain = head.get("gain", 0.0)
    else:
        probe_gain = choice["gain"] if choice and row["features"] == "multi-layer" else 0.0
    row["gain"] = probe_gain + row["gain_over_probe"] if row["gain_over_probe"] is not None else -1.0
    p = row["probe_acc"] or 0.5
    row["gain_se"] = math.sqrt(max(p * (1 - p), 1 / row["n_val"]) / row["n_val"])
    return row


def _choose(rows: list[dict]) -> tuple[dict, str]:
    """The simplest candidate unless a more complex one gains clearly more (rows are simplest first)."""
    measured = [r for r in rows if not r.get("skipped")]
    chosen = measured[0]
    for row in measured[1:]:
        if row["gain"] - chosen["gain"] > NOISE_SE * row["gain_se"]:
            chosen = row
    head = rows[0]
    what = ("feature extraction on multi-layer features" if chosen["plan"] == "head" and
            chosen.get("features") == "multi-layer" else
            "feature extraction" if chosen["plan"] == "head" else f"fine-tuning {chosen['plan']}")
    tried = [r for r in measured if r["plan"] != "head"]
    skipped = [r["plan"] for r in rows if r.get("skipped")]
    reasons = sorted({"beyond the time budget" if "budget" in r["why"] else r["why"] for r in rows if r.get("skipped")})
    parts = [f"kept {what}"]
    if tried:
        gains = ", ".join(f"{r['plan']} {100 * r['gain']:+.1f}" for r in tried)
        parts.append(f"fine-tuning's gains over the last-layer probe on held-out images, in points: {gains} "
                     f"(noise: ±{100 * tried[0]['gain_se']:.1f})")
        added = [r for r in tried if r.get("gain_over_probe") is not None]
        if added:
            parts.append("of which fine-tuning itself added to the probe it started from: " +
                         ", ".join(f"{r['plan']} {100 * r['gain_over_probe']:+.1f}" for r in added))
    if head.get("features") == "multi-layer":
        parts.append(f"multi-layer features were kept for their lower validation loss; in accuracy they gained "
                     f"{100 * head['gain']:+.1f} points by cross-validation")
    if skipped and not tried:  # said plainly: nothing chose feature extraction over fine-tuning by measurement
        parts.append(f"no fine-tuning candidate was measured ({'; '.join(reasons)}: {', '.join(skipped)}), so "
                     f"feature extraction was not compared with fine-tuning")
    elif skipped:
        parts.append(f"not measured ({'; '.join(reasons)}): {', '.join(skipped)}")
    return chosen, "; ".join(parts)


def read_measurement(run_dir: Path) -> dict | None:
    """A run's plan.json; None when it has none (not an Auto run) or it cannot be read."""
    return read_plan(run_dir)


def latest_measurement(dataset_dir: str, backbone: str, workspace: Path | None = None) -> dict | None:
    """plan.json of the newest finished Auto run on this dataset and backbone, with its "run"; None if none."""
    from ..ops.runs import runs_root

    return _latest_measurement(dataset_dir, backbone, str(runs_root(workspace)))


# The Layers page asks at every rerun, and a class's workspace holds every student's runs: looked for again only
# when a run comes, goes or writes a file (an atomic write renames into the run's folder, changing its stamp).
@keyed_on(lambda dataset_dir, backbone, root: folder_stamp(root))
def _latest_measurement(dataset_dir: str, backbone: str, root: str) -> dict | None:
    from ..ops.runs import list_runs, read_status

    for run_dir in list_runs(Path(root).parent):
        config = read_config_record(run_dir).get("config", {})
        if config.get("freeze") != "auto" or config.get("dataset_dir") != dataset_dir \
                or config.get("backbone") != backbone or read_status(run_dir).get("state") != "done":
            continue
        if (measured := read_measurement(run_dir)) is not None:
            return {**measured, "run": str(run_dir)}
    return None
