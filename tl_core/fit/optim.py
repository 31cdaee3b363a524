"""The fine-tune's optimiser settings: layer-wise learning rates from the layer groups, and the schedule."""
from __future__ import annotations

import math

import torch

LAYER_LR_DECAY = 0.7  # each group below the head learns at 0.7× the rate of the one above


def layerwise_param_groups(model: torch.nn.Module, groups, trainable: set[str], lr: float,
                           extra_modules: list[torch.nn.Module] = ()) -> list[dict]:
    """One optimizer group per trainable layer group, the rate lower the further from the head (timm's
    layer decay over group_matcher groups); norm scales and biases without weight decay; a task's extra
    modules at the head's rate."""
    params = dict(model.named_parameters())
    head_index = groups[-1].index
    out = []
    for group in groups:
        if group.name not in trainable:
            continue
        group_lr = lr * LAYER_LR_DECAY ** (head_index - group.index)
        names = group.param_names
        out.append({"params": [params[n] for n in names if params[n].ndim > 1], "lr": group_lr, "name": group.name})
        out.append({"params": [params[n] for n in names if params[n].ndim <= 1], "lr": group_lr,
                    "weight_decay": 0.0, "name": group.name + ".no_decay"})
    task_params = [p for module in extra_modules for p in module.parameters() if p.requires_grad]
    out.append({"params": task_params, "lr": lr, "name": "task"})
    return [g for g in out if g["params"]]


def lr_schedule(optimizer, schedule: str, warmup_epochs: float, steps_per_epoch: int, epochs: int):
    """Linear warm-up then cosine decay per step ("cosine"), or one-cycle ("onecycle")."""
    total = max(steps_per_epoch * epochs, 1)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=min(max(warmup_epochs / epochs, 0.05), 0.5))
    warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
