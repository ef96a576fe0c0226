"""The Ray Tune trial function: a thin wrapper that runs the Trainer and reports every epoch.

Data and run settings are bound with `tune.with_parameters`, never put in the hyperparameter dict.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from . import data
from .checkpoint import save_torch
from .config import make_config
from .engine import Trainer
from .storage import local_data

TRAINER_STATE = "trainer.pt"


def train_trial(config: dict[str, Any], *, data_location: str, splits: data.ImageSplits, max_epochs: int,
                cpus: float = 1.0, workers: int | None = None) -> None:
    """Train one configuration for up to `max_epochs`, one `tune.report` (metrics + checkpoint) per epoch.

    Resumes from `tune.get_checkpoint()` when Ray restarts the trial (a crash, a lost node, `tuner resume`).
    """
    # One compute thread per reserved CPU: trials sharing a node must not fight over its cores.
    torch.set_num_threads(max(1, int(cpus)))
    hyperparameters = make_config({**config, "epochs": max_epochs})
    # A URI is fetched once into this node's cache; the driver's file lists are moved onto that copy.
    splits = splits.rebased(local_data(data_location))
    # A trial uses exactly what Ray reserved for it: its GPU (an error if CUDA cannot see it), else the CPU.
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    trainer = Trainer(hyperparameters, splits, device=device, num_workers=workers)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trainer.load_state_dict(load_trainer_state(checkpoint))
    node = ray.get_runtime_context().get_node_id()
    try:
        while trainer.epoch < hyperparameters.epochs:
            metrics = trainer.run_epoch()
            with tempfile.TemporaryDirectory() as folder:
                # Lean: no copy of the best weights; Ray keeps the best-scoring checkpoint by the metric.
                save_torch(trainer.state_dict(include_best=False), Path(folder) / TRAINER_STATE)
                # Wall-clock times: the report's time axis, and the trial turnover bench/search.py measures.
                times = {"first_step_at": trainer.first_step_at, "reported_at": time.time()}
                tune.report({**metrics, **times, "node": node}, checkpoint=tune.Checkpoint.from_directory(folder))
    finally:
        # Ray reuses this worker process for the next trial: leave it nothing to hold on to.
        del trainer
        if device == "cuda":  # give the GPU memory back now; a full collection costs ~0.2 s, so only here
            gc.collect()
            torch.cuda.empty_cache()


def load_trainer_state(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """The trainer state saved in one trial checkpoint (loaded with weights_only=True)."""
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / TRAINER_STATE, map_location="cpu", weights_only=True)
