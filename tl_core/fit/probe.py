"""The probe: logistic-regression heads on frozen features, fitted by L-BFGS, folded into a plain Linear.

Each epoch of the probe phase is one step down a regularisation path (strong to weak L2, warm-started),
so validation picks how much regularisation the data needs. Several fits (the folds of a
cross-validation and the kept head) run side by side as one batched problem.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..ops.words import plural

# L-BFGS iterations an epoch of the probe may take (it stops earlier once converged). Enough to
# converge at each L2 step, so validation picks the L2 and not how far the optimiser happened to get:
# on Fashion-MNIST 8 iterations picked a worse step (test 79.6 %) than 30 or 60 (81.2 %).
PROBE_ITERS_PER_EPOCH = 30
# The probe's L2 penalty (mean loss + l2·‖W‖², standardised features) walks down from 0.3, halving each
# epoch. Measured on Fashion-MNIST (200 train / 500 test, Lite0): fixed 1e-3 gave 77-79 %, 0.03-0.1 gave 81 %.
PROBE_L2_START, PROBE_L2_STEP = 0.3, 0.5
# Each feature's standard deviation is floored at this fraction of the median one before the probe's
# weights are folded back onto raw features (W / std). Without it, features that barely vary got weights
# up to 288 and the head blew up as soon as fine-tuning moved them; with 0.2 the largest is 1.7 and test
# accuracy rises 77.2 → 78.6 % (Fashion-MNIST, 20 a class, mean of 5 draws).
PROBE_STD_FLOOR = 0.2


@contextmanager
def one_thread():
    """Tiny matrices gain nothing from threads, and OpenMP threads that spin on a busy CPU made
    the probe 7x slower (measured: 2 threads 6.8 s, 1 thread 1.0 s, on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HeadFits:
    """Logistic-regression heads on standardised features, one per training set in `train_masks`
    (fits × images), fitted side by side: their objectives are independent, so their sum is one
    convex problem and one L-BFGS drives them all, with one set of per-step overheads, not one per fit.

    With fewer images than features, each fit works in the orthonormal basis of its training rows
    (from an SVD): the L2-regularised solution lies in that span, and the basis keeps the L2 norm, so
    the problem is the same, only smaller (200 × 1280 features → 200 × 200).

    `class_weights` (one a class) weight each image's loss by its class's: imbalanced classes then count
    the same. The standardisation stays unweighted: it describes the features, not the loss.
    """

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, train_masks: torch.Tensor, num_classes: int,
                 class_weights: torch.Tensor | None = None):
        weights = train_masks.float()
        count = weights.sum(1, keepdim=True)
        self.mean = weights @ feats / count
        variance = (weights @ feats.pow(2) / count - self.mean.pow(2)).clamp_min(0) * count / (count - 1).clamp_min(1)
        std = variance.sqrt()
        # A feature that barely varies on the training images would get a weight of w/std on raw
        # features: the head would amplify any later drift of that feature (fine-tuning, a new camera).
        self.std = std.clamp_min(PROBE_STD_FLOOR * std.median(1, keepdim=True).values + 1e-6)
        x = (feats[None] - self.mean[:, None]) / self.std[:, None]  # fits × images × features
        self.basis = _row_space_bases(x, train_masks)  # fits × features × rank, or None
        self.x = x @ self.basis if self.basis is not None else x
        self.y = labels
        self.train_masks = train_masks
        # Each fit's loss is the mean over its own training images; with class weights (tl_core.fit.imbalance),
        # the weighted mean: an image counts class_weights[its class] times.
        if class_weights is not None:
            weights = weights * class_weights.to(weights)[labels][None]
        self.sample_weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        fits, dim = self.x.shape[0], self.x.shape[2]
        self.weight = torch.zeros(fits, dim, num_classes, device=feats.device, requires_grad=True)
        self.bias = torch.zeros(fits, 1, num_classes, device=feats.device, requires_grad=True)
        self.optimizer = torch.optim.LBFGS([self.weight, self.bias], lr=1, max_iter=PROBE_ITERS_PER_EPOCH,
                                           history_size=20, line_search_fn="strong_wolfe")

    def logits(self) -> torch.Tensor:
        return torch.baddbmm(self.bias, self.x, self.weight)

    def step(self, l2: float, label_smoothing: float) -> None:
        """Continue every fit (warm start) at penalty `l2`."""
        y = self.y.expand(len(self.x), *self.y.shape)

        def closure():
            self.optimizer.zero_grad()
            losses = self.image_losses(self.logits(), y, label_smoothing)
            loss = (losses * self.sample_weights).sum() + l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            self.optimizer.step(closure)

    @staticmethod
    def image_losses(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """fits × images: each image's loss under each fit (cross-entropy over the classes)."""
        return F.cross_entropy(logits.transpose(1, 2), y, label_smoothing=label_smoothing, reduction="none")

    @torch.no_grad()
    def validation_log_probs(self, val_sets: list[torch.Tensor]) -> torch.Tensor:
        """images × classes: each image of val_sets[f] scored by fit f, which did not see it (zeros elsewhere)."""
        return out_of_fold(self.logits().log_softmax(-1), val_sets)

    @torch.no_grad()
    def copy_to(self, head: torch.nn.Linear, fit: int = -1) -> None:
        """Fold fit's basis and standardisation into a plain Linear on raw features:
        W = basis·B, then W' = W/std and b' = b - (mean/std)·W."""
        weight = self.weight[fit] if self.basis is None else self.basis[fit] @ self.weight[fit]
        mean, std = self.mean[fit], self.std[fit]
        head.weight.copy_((weight / std[:, None]).T)
        head.bias.copy_(self.bias[fit, 0] - (mean / std) @ weight)


def out_of_fold(per_fit: torch.Tensor, val_sets: list[torch.Tensor]) -> torch.Tensor:
    """images × outputs from fits × images × outputs: each image of val_sets[f] as fit f saw it (zeros elsewhere)."""
    out = torch.zeros(per_fit.shape[1:])
    for f, val in enumerate(val_sets):
        out[val] = per_fit[f, val].cpu()
    return out


def _row_space_bases(x: torch.Tensor, train_masks: torch.Tensor) -> torch.Tensor | None:
    """Per fit, an orthonormal basis (features × rank) of its training rows; None when that saves nothing."""
    fits, n, dim = x.shape
    rank = int(train_masks.sum(1).max())
    if rank >= dim:
        return None
    bases = torch.zeros(fits, dim, rank, device=x.device)
    for f in range(fits):
        _, _, vh = torch.linalg.svd(x[f][train_masks[f]], full_matrices=False)
        bases[f, :, :vh.shape[0]] = vh.T  # a fit with fewer rows leaves zero columns: they stay at zero weight
    return bases


def l2_at(step: int) -> float:
    """The L2 penalty of the path's `step`-th epoch."""
    return PROBE_L2_START * PROBE_L2_STEP ** step


def best_on_path(feats: torch.Tensor, labels: torch.Tensor, train_masks: torch.Tensor, val_sets: list[torch.Tensor],
                 num_classes: int, steps: int, label_smoothing: float, fits_class=HeadFits,
                 class_weights: torch.Tensor | None = None) -> dict:
    """Walk the L2 path on `feats`; the step with the lowest validation loss: {"loss", "acc", "l2", "correct"}
    ("correct": per validation image, in the order of torch.cat(val_sets), for paired comparisons)."""
    fits = fits_class(feats, labels, train_masks, num_classes, class_weights=class_weights)
    val = torch.cat(val_sets)
    best = None
    for k in range(steps):
        fits.step(l2_at(k), label_smoothing)
        log_probs = fits.validation_log_probs(val_sets)[val]
        loss = F.nll_loss(log_probs, labels[val]).item()
        if best is None or loss < best["loss"]:
            correct = log_probs.argmax(1) == labels[val]
            best = {"loss": loss, "acc": correct.float().mean().item(), "l2": l2_at(k), "correct": correct}
    return best


def choose_features(feats: torch.Tensor, last_features: int, labels: torch.Tensor, train_masks: torch.Tensor,
                    val_sets: list[torch.Tensor], num_classes: int, steps: int, label_smoothing: float,
                    fits_class=HeadFits, class_weights: torch.Tensor | None = None) -> dict:
    """Last-layer or multi-layer features, by the validation loss of each one's best probe (the same folds).

    `feats` are multi-layer features whose last `last_features` columns are the last layer's. Returns
    {"features", "scores": {name: {"acc", "loss"}}, "gain", "gain_se", "words"}: gain is multi-layer's
    validation accuracy minus last-layer's on the same images, gain_se its paired standard error.
    """
    candidates = {"last": feats[:, -last_features:], "multi-layer": feats}
    scores = {name: best_on_path(x, labels, train_masks, val_sets, num_classes, steps, label_smoothing, fits_class,
                                 class_weights)
              for name, x in candidates.items()}
    chosen = min(scores, key=lambda name: scores[name]["loss"])
    diff = scores["multi-layer"]["correct"].float() - scores["last"]["correct"].float()
    gain, se = diff.mean().item(), (diff.std() / len(diff) ** 0.5).item() if len(diff) > 1 else float("nan")
    clear = abs(gain) > 2 * se
    # The choice is made on validation loss (it weighs every image's confidence, not only right or wrong):
    # said first, since equal accuracies would otherwise leave the choice unexplained.
    words = (f"{chosen} features kept for their lower validation loss ({scores[chosen]['loss']:.3f} against "
             f"{scores['last' if chosen == 'multi-layer' else 'multi-layer']['loss']:.3f}); validation accuracy "
             f"{scores['multi-layer']['acc']:.1%} with every stage pooled against {scores['last']['acc']:.1%} with "
             f"the last layer ({gain * 100:+.1f} ± {se * 100:.1f} points over {plural(len(diff), 'validation image')}"
             f"{': a clear difference' if clear else ', within the noise'})")
    return {"features": chosen, "scores": {n: {"acc": s["acc"], "loss": s["loss"]} for n, s in scores.items()},
            "gain": gain, "gain_se": se, "words": words}
