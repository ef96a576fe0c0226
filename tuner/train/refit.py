"""Refit: the chosen configuration trained again on train+val, for the optimizer steps the search chose.

AutoGluon's `refit_full`: once the validation images have chosen a configuration and its step, they are
labels like any other, and a model that learnt from all of them usually does better on unseen images.
Nothing is validated here; the test split alone can judge the refit model.

What stays the trial's: the optimizer steps (a step is one batch of `batch_size`, so the refit takes as
many steps, in fewer, longer epochs over train+val) and the LR at every step (the schedule's length and
the `step` schedule's epochs are the trial's, counted in its batches of train alone). A best step before
the trial's last runs the schedule up to that step and stops there, as the chosen checkpoint did:
annealing further would give a model at a point of the schedule that validation never judged.
Gradual unfreezing (`unfreeze_every`, in epochs) counts the refit's epochs: passes over train+val.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .checkpoint import model_payload
from .config import TrainConfig
from .ema import evaluated_model
from .engine import Trainer, out_of_memory_named
from .folders import ImageSplits
from .plan import steps_per_epoch
from .trainer_state import description


@dataclass(frozen=True)
class Refit:
    """The refit model as a best/model.pt payload, and what it learnt from."""

    payload: dict[str, Any]  # model_payload: metrics hold refit, refit_steps, refit_images, refit_epochs
    images: int  # train+val images it learnt from
    epoch_images: list[int]  # images seen in each epoch, in order (the last may end at the chosen step)
    seconds: float


def refit_splits(splits: ImageSplits) -> ImageSplits:
    """`splits` with the validation images added to the training ones.

    The validation list stays as it was: the Trainer builds its loaders from it, but a refit never
    validates, so nothing is chosen by those images twice.
    """
    return dataclasses.replace(splits, train=[*splits.train, *splits.val])


def schedule_steps(config: TrainConfig, train_images: int) -> int:
    """The trial's LR schedule length in optimizer steps: config.steps, else its epochs of train alone."""
    return config.steps or config.epochs * steps_per_epoch(train_images, config.batch_size)


def refit(config: TrainConfig, splits: ImageSplits, steps: int, *, device: str = "auto",
          num_workers: int | None = None, step_hook: Callable[[Trainer, int], None] | None = None) -> Refit:
    """Train `config` on train+val for `steps` optimizer steps of the trial's LR schedule.

    `steps` is the step of the chosen checkpoint; 0 (a probe round) gives the probe fitted on train+val.
    `step_hook(trainer, step)` runs before every step (tests count them). Raises Diverged or OutOfMemory
    as a trial would.
    """
    if steps < 0:
        raise UserError(f"refit steps must be >= 0, but got {steps=}; pass the chosen checkpoint's step")
    start = time.perf_counter()
    trainer = Trainer(config, refit_splits(splits), device=device, num_workers=num_workers)
    trainer.step_hook = step_hook
    # The trial's schedule (its length, its epochs for the `step` schedule); stop at the chosen step.
    trainer.schedule_steps = schedule_steps(config, len(splits.train))
    trainer.epoch_steps = steps_per_epoch(len(splits.train), config.batch_size)
    trainer.total_steps = steps
    epochs = []
    with out_of_memory_named(config, trainer.device):
        if config.probes_head():  # the trial's first round: the head fitted before any step
            trainer.fit_probe_head()
        while trainer.step < steps:
            if trainer.target_depth(trainer.epoch) > trainer.depth:
                trainer.unfreeze_to(trainer.target_depth(trainer.epoch))
            epochs.append(trainer.train_one_epoch())
    state = copy.deepcopy(evaluated_model(trainer.model, trainer.ema).state_dict())
    images = len(trainer.train_samples)
    metrics: dict[str, Any] = {"refit": True, "refit_steps": trainer.step, "refit_images": images,
                               "refit_epochs": trainer.epoch, "step": trainer.step,
                               # how the head was fitted; its seconds left out, so a refit's metrics repeat
                               **{k: v for k, v in (trainer.probe or {}).items() if k != "probe_seconds"}}
    if epochs:  # the last epoch's training metrics, as a trial's round reports them
        metrics.update({"train_loss": epochs[-1]["train_loss"], "train_acc": epochs[-1]["train_acc"]})
    return Refit(payload=model_payload(state, description(trainer), trainer.epoch, metrics), images=images,
                 epoch_images=[e["images"] for e in epochs], seconds=time.perf_counter() - start)
