"""The weights' moving average (ema_decay > 0): the model that is validated and kept as best.

torch's AveragedModel, updated over the trained tensors only (frozen ones are the starting weights in
both, and averaging a whole ResNet every step would cost far more than a head-only step on cached
features), with a decay that warms up (ema_decay_at).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..internals import foreach_copy_, foreach_lerp_
from .model import trained_keys


def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA's decay after `updates` updates: `decay`, warmed up as TensorFlow's ExponentialMovingAverage
    with num_updates and diffusers' EMAModel do, min(decay, (1 + t) / (10 + t)). Without it an average with
    a longer horizon than the run so far is mostly the first, poor steps' weights (0.99 after 100 steps still
    holds 37% of the start); with it the average's reach grows with the run."""
    return min(decay, (1 + updates) / (10 + updates))


def ema_with_warmup(decay: float):
    """An AveragedModel multi_avg_fn: torch's get_ema_multi_avg_fn update with the decay of ema_decay_at."""
    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: int | torch.Tensor) -> None:
        foreach_lerp_(ema_params, params, 1.0 - ema_decay_at(decay, int(n_averaged)))
    return update


class ModelEMA:
    """The moving average of `model`'s trained tensors; call `track(depth)` whenever more stages train.

    `module` is the averaged model (in eval mode, no gradients); `n_averaged` counts its updates.
    """

    def __init__(self, model: nn.Module, decay: float, depth: int):
        self.model = model
        self.average = AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)
        self.average.eval().requires_grad_(False)
        self.track(depth)

    @property
    def module(self) -> nn.Module:
        return self.average.module

    @property
    def n_averaged(self) -> torch.Tensor:
        return self.average.n_averaged

    def track(self, depth: int) -> None:
        """Average the tensors that train at `depth`: floating ones, and the rest (counters) copied."""
        keys = trained_keys(self.model, depth)
        ema, own = self.module.state_dict(), self.model.state_dict()  # tensors sharing their storage
        floats = [k for k in keys if own[k].is_floating_point()]
        others = [k for k in keys if not own[k].is_floating_point()]
        self.pairs = ([ema[k] for k in floats], [own[k] for k in floats],
                      [ema[k] for k in others], [own[k] for k in others])

    def update(self, step: int) -> None:
        """AveragedModel.update_parameters (use_buffers) over the tracked tensors, after optimizer step
        `step` (0-based; = n_averaged, one update a step, both restored together, without a device sync).
        The first update copies, as AveragedModel's does."""
        ema_floats, floats, ema_others, others = self.pairs
        with torch.no_grad():
            if step == 0:
                foreach_copy_(ema_floats, floats)
            else:
                self.average.multi_avg_fn(ema_floats, floats, step)
            if others:  # batch-norm counters: an average means nothing
                foreach_copy_(ema_others, others)
        self.average.n_averaged += 1


def evaluated_model(model: nn.Module, ema: ModelEMA | None) -> nn.Module:
    """The weights that are validated and kept as best: the EMA once it has averaged a step, else the model."""
    if ema is not None and ema.n_averaged > 0:
        return ema.module
    return model
