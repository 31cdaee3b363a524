"""The fit loop for a dataset with a labels table: the same Fit, with the probe fitted per task head, the
tasks' joint loss (multitask.MultiTaskObjective) when layers train, and outputs per task."""
from __future__ import annotations

import torch

from . import MultiTaskObjective, TaskLayout, has_label, load_task_data, probe_tasks, summary_from_probs
from .outputs import save_multitask_outputs
from ..fit import probe_phase
from ..fit.probe import choose_features, l2_at, one_thread
from ..fit.run_data import RunData
from ..ops.runs import record_facts
from ..fit.loop import Fit


class MultiTaskFit(Fit):
    refits_kept_probe = False  # its probe fits a head per task (Fit.refit_kept_probe refits one)

    def __init__(self, config, run_dir, callbacks, task=None, strategy=None):
        super().__init__(config, run_dir, callbacks, task, strategy)
        self.layout: TaskLayout | None = None
        self.targets = None
        self.thresholds: dict[str, list[float]] = {}
        self.weights = dict(config.task_weights)

    def _load_data(self) -> RunData:
        data, self.layout, self.targets = load_task_data(self.config)
        self.task = MultiTaskObjective(self.layout, self.weights, self.config.label_smoothing)
        record_facts(self.run_dir, tasks=self.layout.to_list())
        return data

    def _use(self, data: RunData) -> None:
        super()._use(data)
        self.labels = self.targets.to(self.device)  # the batches carry every task's targets

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.layout.probabilities(logits)

    def _weigh_classes(self) -> None:
        """Classes are weighted in single-task runs only (tl_core.fit.imbalance): here each task's loss counts as a
        whole (task_weights); a requested weighting is said to be left out, not silently dropped."""
        words = "classes not weighted: a multi-task run weights its tasks, not their classes"
        self.class_weighting = {"on": False, "ratio": None, "words": words}
        record_facts(self.run_dir, class_weights=self.class_weighting)
        if self.config.class_weights == "on":
            self.emit("notice", kind="class_weights", message=words)

    def task_summary(self, probs: torch.Tensor, y: torch.Tensor) -> dict:
        return summary_from_probs(probs.cpu(), y.cpu(), self.layout, self.task.weights)

    def probe(self, epochs: int) -> None:
        """Every head fitted on the frozen features, one L2 step an epoch (multitask.probe_tasks)."""
        self.start_phase("probe", epochs, message="fitting a head per task on the backbone's frozen features")
        self.sources.features = probe_phase.frozen_features(self)
        feats = self.sources.features.features_all.float().cpu()
        train_masks, val_sets = probe_phase.fits_and_validation(self)
        record_facts(self.run_dir, head="logistic")
        with one_thread():
            if self.config.features == "auto" and self.net.feature_kind == "multi-layer":
                feats = self._choose_task_features(feats, train_masks, val_sets, epochs)
            probe_tasks(self, feats, train_masks, val_sets, epochs, l2_at, self.config.label_smoothing)

    def _choose_task_features(self, feats, train_masks, val_sets, epochs) -> torch.Tensor:
        """Multi-layer or last-layer features, chosen on the first single-label task (as a single-task run does)."""
        single = [head for head in self.layout if not head.multi_label]
        if not single:
            return feats
        head = single[0]
        y = self.targets.cpu()
        rows = has_label(y, head).nonzero().flatten()
        where = torch.full((len(y),), -1, dtype=torch.long)
        where[rows] = torch.arange(len(rows))
        sub_val = [where[v][where[v] >= 0] for v in val_sets]
        choice = choose_features(feats[rows], self.model.last_features, y[rows][:, head.outputs].argmax(1),
                                 train_masks[:, rows], sub_val, len(head.classes), epochs,
                                 self.config.label_smoothing)
        choice["words"] = f"{choice['words']} (measured on the task {head.name!r})"
        record_facts(self.run_dir, features=choice["features"], features_choice=choice)
        self.emit("notice", phase="probe", kind="features", message=choice["words"])
        if choice["features"] == "last":
            self.use_last_layer(self.layout.width)
            feats = feats[:, -self.model.num_features:]
        return feats

    def evaluate(self, idx: list[int]) -> tuple[float, float]:
        summary = self.task_summary(self.predict_probs(idx), self.targets[idx])
        self._last_validation = summary
        return summary["loss"], summary["score"]

    def epoch_details(self) -> dict:
        summary = getattr(self, "_last_validation", None)
        return {"tasks": {name: {"val_loss": t["loss"], "val_score": t["score"]} for name, t in
                          summary["tasks"].items()}} if summary else {}

    def reference_loss(self) -> float | None:
        features = self.sources.features
        if features is None:
            return None
        with torch.no_grad():
            probs = self._probabilities(self.net.head()(features.features_all[self.train_idx].float()))
            return self.task_summary(probs, self.targets[self.train_idx])["loss"]

    def save(self) -> dict:
        if self.net is None:
            return {}
        self.emit("before_save")
        if self.best is None:
            return {}
        self._thresholds_at(self.best["epoch"])
        return save_multitask_outputs(self)

    def _thresholds_at(self, epoch: int) -> None:
        """Per tag, the threshold with the best F1 on the kept epoch's validation (out-of-fold) predictions."""
        from . import best_thresholds

        probs = self.progress.val_probs_at.get(epoch)
        if probs is None:
            probs = self.predict_probs(self.val_idx)
        y = self.targets.cpu()[self.val_idx]
        for head in self.layout:
            if head.multi_label:
                self.thresholds[head.name] = best_thresholds(probs[:, head.outputs].numpy(), y[:, head.outputs].numpy())
