"""The trainer's checkpoint state: what `checkpoint.pt` and a trial checkpoint hold, and what `best/model.pt` holds.

Functions of a Trainer (engine.py), kept apart from its loop. The keys and CHECKPOINT_FORMAT are the
checkpoint format: older checkpoints must keep loading, so keys are added, never renamed.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UserError
from .checkpoint import model_payload
from .model import CHECKPOINT_FORMAT, apply_trained_state, trained_keys

if TYPE_CHECKING:
    from .engine import Trainer


def description(trainer: Trainer) -> dict[str, Any]:
    """Config, class names, weights provenance, normalisation and the compute choice: what a checkpoint
    needs besides tensors."""
    return {"config": trainer.config.to_dict(), "classes": trainer.classes, "weights": trainer.weights,
            "normalization": trainer.normalization, "compute": trainer.compute.to_dict()}


def best_payload(trainer: Trainer, extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The best epoch as a self-contained checkpoint (what `best/model.pt` holds)."""
    assert trainer.best_metrics is not None and trainer.best_state is not None
    return model_payload(trainer.best_state, description(trainer), trainer.best_metrics["epoch"],
                         {**trainer.best_metrics, **(extra_metrics or {})})


def trainer_state(trainer: Trainer, include_best: bool = True) -> dict[str, Any]:
    """Everything needed to continue the run exactly where it stopped, lean: of the model only the
    tensors training changed (the head and the stages trained so far; the rest is the starting
    weights, named by `base_sha256`), so a head-only checkpoint is kilobytes, not a whole ResNet.

    `include_best=False` leaves out the best weights (for callers that keep the best epoch's
    checkpoint themselves, as Ray Tune does).
    """
    # Stages not trained by now never were (depth only grows), so these keys cover the best weights too.
    keys = trained_keys(trainer.model, trainer.depth)
    best = ({k: trainer.best_state[k] for k in keys}
            if include_best and trainer.best_state is not None else None)
    ema = trainer.ema
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v for k, v in trainer.model.state_dict().items() if k in keys},
        "base_sha256": trainer.weights["state_sha256"],
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "depth": trainer.depth,
        "epoch": trainer.epoch,
        "step": trainer.step,
        "probe": trainer.probe,
        # The moving average's trained tensors (the rest of it is the starting weights, as above).
        "ema": None if ema is None else {k: v for k, v in ema.module.state_dict().items() if k in keys},
        "ema_updates": 0 if ema is None else int(ema.n_averaged),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else None,
        **description(trainer),
        "best_metrics": trainer.best_metrics,
        "best_state": best,
        "history": trainer.history,
    }


def restore_trainer(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put `trainer` where trainer_state(...) left it; UserError when the data's classes changed."""
    if state["classes"] != trainer.classes:
        raise UserError(
            f"the checkpoint was trained on classes {state['classes']} but the data has {trainer.classes}; "
            f"resume with the same data"
        )
    trainer.unfreeze_to(state["depth"])
    # The best weights are the starting weights with the checkpoint's best trained tensors on top.
    starting = copy.deepcopy(trainer.model.state_dict()) if state["best_state"] is not None else None
    apply_trained_state(trainer.model, trainer.weights, state["model"], state.get("base_sha256"), "the checkpoint")
    if trainer.ema is not None and state.get("ema") is not None:
        apply_trained_state(trainer.ema.module, trainer.weights, state["ema"], state.get("base_sha256"),
                            "the checkpoint")
        trainer.ema.n_averaged.fill_(state["ema_updates"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.step, trainer.probe = state["epoch"], state["step"], state["probe"]
    torch.set_rng_state(state["rng"])
    if trainer.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    trainer.best_metrics = state["best_metrics"]
    trainer.best_state = None if starting is None else {**starting, **state["best_state"]}
    trainer.history = list(state["history"])
