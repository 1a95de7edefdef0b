"""The optimizer's side of a run: AdamW (parameter groups, fused on CUDA) and the learning-rate
schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hourglass_edu.training.config import TrainConfig

__all__ = ["learning_rate"]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight matrices of Linear layers decay; everything else does not.

    Norm scales, biases, embeddings (even when tied to the output layer) and learned vectors such
    as a learned shift fill are not "weights that multiply an input", and decaying them only pulls
    useful values towards zero.
    """
    embedding_ids = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    linear_weight_ids = {
        id(module.weight) for module in model.modules()
        if isinstance(module, nn.Linear) and id(module.weight) not in embedding_ids
    }
    decay, no_decay = [], []
    for parameter in model.parameters():  # model.parameters() already lists tied tensors once
        if not parameter.requires_grad:
            continue
        (decay if id(parameter) in linear_weight_ids else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup over `warmup_steps`, times a cosine from `lr` down to `lr * min_lr_ratio`.

    The cosine follows `progress` in [0, 1]: the fraction of the step budget done, or of the time
    budget, whichever is further along.
    """
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = 0.0
    if config.steps is not None:
        progress = max(progress, step / config.steps)
    if config.minutes is not None:
        progress = max(progress, elapsed / (60.0 * config.minutes))
    progress = min(progress, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * warmup * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def adamw_options(device_type: str) -> dict[str, Any]:
    """How AdamW runs its update: one fused kernel on CUDA (all parameters in a few launches);
    elsewhere torch's default (its multi-tensor "foreach" form where it has one, the plain loop on
    a CPU, whose numbers every CPU run and test so far were made with)."""
    return {"fused": True} if device_type == "cuda" else {}


def build_optimizer(model: nn.Module, config: TrainConfig, device_type: str):
    """AdamW over `parameter_groups`, at the peak rate (the schedule sets it every step)."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2), **adamw_options(device_type))
