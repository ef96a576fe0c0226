"""The Ray Tune trial function: a thin wrapper that runs the Trainer and reports every round of epochs.

Data and run settings are bound with `tune.with_parameters`, never put in the hyperparameter dict. That
dict, Ray's config, holds one more key than the hyperparameters: the trial's number (runs/outcomes.NUMBER,
given by the searcher, study.py), which every report carries and TrainConfig never sees.

How a trial meets faults: a crash (an exception, a killed process, a lost node) fails the trial and Ray
restarts it from its latest checkpoint, up to `--max-failures` times; a damaged checkpoint is skipped
for the trial's previous one (or a fresh start), with a warning, but one that cannot be read (EIO on
failing storage, after load_torch's retries) fails the trial, which Ray retries from it; a NaN or
infinite loss ends the trial cleanly with `diverged: True` (no retry: the same configuration would
diverge again); running out of memory fails it with a message that names the batch and image size.
"""

from __future__ import annotations

import gc
import io
import json
import math
import posixpath
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from ..runs.budget import SearchBudget
from ..runs.outcomes import NUMBER
from ..runs.selection import Candidate
from ..runs.storage import local_data
from ..testing.faults import fault_hook, fault_point
from ..train import folders
from ..train.checkpoint import CHECKSUM_SUFFIX, CorruptCheckpoint, atomic_write, load_torch, read_retrying, save_torch
from ..train.config import TrainConfig, make_config
from ..train.engine import Diverged, Trainer
from ..train.evaluation import ImagePredictions
from ..train.model import CHECKPOINT_FORMAT
from ..train.plan import TrialPlan, steps_per_epoch, trial_plan

TRAINER_STATE = "trainer.pt"
# Each validation image's prediction at the checkpoint's round, in the order of the split's samples: the
# search's selection (runs/selection.py) compares trials by them. numpy arrays, read without pickle.
PREDICTIONS = "val_predictions.npz"
PREDICTION_ARRAYS = ("predicted", "true_prob", "label")
# Left in a checkpoint whose weights the search deleted (pruning.py): neither delivered nor resumed from,
# it keeps PREDICTIONS for the selection's comparisons. One JSON line: the bytes freed and why.
WEIGHTS_DELETED = "weights_deleted.json"


class WeightsDeleted(CorruptCheckpoint):
    """A checkpoint whose weights the search deleted on purpose (pruning.py): skipped, as a damaged one is."""


def train_trial(config: dict[str, Any], *, data_location: str, splits: folders.ImageSplits, budget: SearchBudget,
                cpus: float = 1.0, loader_workers: int | None = None) -> None:
    """Train one configuration for the search's budget, one `tune.report` (metrics + checkpoint) per round.

    Resumes from `tune.get_checkpoint()` when Ray restarts the trial (a crash, a lost node, `tuner resume`).
    """
    # One compute thread per reserved CPU: trials sharing a node must not fight over its cores.
    torch.set_num_threads(max(1, int(cpus)))
    # The trial's number (study.py) goes in every report, not into TrainConfig; a trial of a run made before
    # trials were numbered has none.
    number = config.get(NUMBER)
    config = {k: v for k, v in config.items() if k != NUMBER}
    plan = plan_for(make_config(config), budget, len(splits.train))
    hyperparameters = make_config({**config, "steps": plan.steps, "epochs": plan.rounds * plan.round_epochs})
    # A URI is fetched once into this node's cache; the driver's file lists are moved onto that copy.
    splits = splits.rebased(local_data(data_location))
    # A trial uses exactly what Ray reserved for it: its GPU (an error if CUDA cannot see it), else the CPU.
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    trainer = Trainer(hyperparameters, splits, device=device, num_workers=loader_workers)
    trainer.step_hook = fault_hook(config)
    warning = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        state, warning = resume_state(checkpoint)
        if state is not None:
            trainer.load_state_dict(state)
    node = ray.get_runtime_context().get_node_id()
    try:
        while trainer.step < trainer.total_steps:
            # Ray's iteration is our round, also after resuming from an older checkpoint than Ray's latest.
            extra = {"node": node, "diverged": False, "training_iteration": len(trainer.history) + 1}
            if number is not None:
                extra[NUMBER] = number
            if warning:
                extra["warning"], warning = warning, None
            try:
                metrics = trainer.run_round(plan.round_epochs)
            except Diverged as err:
                # The configuration's result, not a crash: report it (no checkpoint of the broken weights)
                # and end the trial, so Ray does not retry what would diverge again.
                nan = math.nan
                tune.report({**extra, "epoch": err.epoch, "step": trainer.step,
                             "budget_steps": plan.budget_spent(trainer.step), "train_loss": err.loss,
                             "val_loss": nan, "val_acc": nan, "improved": False, "unfrozen_stages": trainer.depth,
                             "diverged": True, "reported_at": time.time(), **best_so_far(trainer)})
                return
            with tempfile.TemporaryDirectory() as folder:
                # Lean: no copy of the best weights; Ray keeps the best-scoring checkpoint by the metric.
                save_torch(trainer.state_dict(include_best=False), Path(folder) / TRAINER_STATE, checksum=True)
                save_predictions(trainer.val_predictions, Path(folder) / PREDICTIONS)
                fault_point("checkpoint", config)
                # Wall-clock times: the report's time axis, and the trial turnover bench/search.py measures.
                times = {"first_step_at": trainer.first_step_at, "reported_at": time.time()}
                spent = {"budget_steps": plan.budget_spent(trainer.step)}  # ASHA's time axis
                tune.report({**metrics, **spent, **times, **extra, **best_so_far(trainer)},
                            checkpoint=tune.Checkpoint.from_directory(folder))
    finally:
        # Ray reuses this worker process for the next trial: leave it nothing to hold on to.
        del trainer
        if device == "cuda":  # give the GPU memory back now; a full collection costs ~0.2 s, so only here
            gc.collect()
            torch.cuda.empty_cache()


def best_so_far(trainer: Trainer) -> dict[str, float]:
    """`best_<metric>`: the trial's best round so far, the probe's included, which ASHA compares (driver.py).

    Fine-tuning from a probe head first falls below the probe, then climbs past it; judged on its last
    round, such a trial would be stopped in that dip, though its best checkpoint is as good as any.
    """
    metric = trainer.config.metric
    return {f"best_{metric}": trainer.best_metrics[metric] if trainer.best_metrics else math.nan}


def save_predictions(predictions: ImagePredictions, path: Path) -> None:
    """PREDICTIONS: the arrays of PREDICTION_ARRAYS, one entry per validation image."""
    arrays = {name: getattr(predictions, name).numpy() for name in PREDICTION_ARRAYS}
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def load_predictions(checkpoint: tune.Checkpoint) -> dict[str, np.ndarray] | None:
    """The per-image validation predictions saved with `checkpoint`; None when it has none (a checkpoint from
    before they were saved) or they do not read back whole (a damaged file).

    CheckpointReadError when the file cannot be read (after read_retrying's tries): not a None, which
    would change how the search's delivered trial is chosen.
    """
    shown = f"{checkpoint.path.rstrip('/')}/{PREDICTIONS}"

    def read() -> bytes:  # this file alone: a checkpoint at a URI is not downloaded whole
        with checkpoint.filesystem.open_input_file(shown) as handle:
            return handle.read()

    try:
        content = read_retrying(read, shown)
    except FileNotFoundError:
        return None
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in PREDICTION_ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    return arrays if len({a.shape for a in arrays.values()}) == 1 else None


def checkpoint_candidate(checkpoint, metrics: dict[str, Any], metric: str) -> Candidate | None:
    """A checkpoint as the selection sees it: its per-image correctness, trained stages, steps and score;
    None when it holds no predictions (one from before they were saved)."""
    predictions = load_predictions(checkpoint)
    if predictions is None:
        return None
    return Candidate(metrics.get("trial_id"), predictions["predicted"] == predictions["label"],
                     stages=int(metrics.get("unfrozen_stages") or 0), steps=int(metrics.get("step") or 0),
                     score=float(metrics.get(metric, math.nan)))


def plan_for(hyperparameters: TrainConfig, budget: SearchBudget, train_images: int) -> TrialPlan:
    """This trial's rounds: head-only trials on cached features take more, cheaper steps (see train/plan.py)."""
    head_only = hyperparameters.unfreeze_depth == 0 and hyperparameters.feature_cache
    epoch_steps = steps_per_epoch(train_images, hyperparameters.batch_size)
    return trial_plan(budget.steps, budget.round_steps, epoch_steps, head_only=head_only)


def load_trainer_state(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """The trainer state saved in one trial checkpoint, verified (sha256 sidecar, load test, format).

    CorruptCheckpoint, naming the file, when it is missing, damaged or not a trainer state;
    CheckpointReadError when it could not be read (its bytes may be whole).
    """
    shown = f"{checkpoint.path.rstrip('/')}/{TRAINER_STATE}"
    if not holds_weights(checkpoint):
        raise WeightsDeleted(f"checkpoint {checkpoint.path} holds no weights: the search deleted them, as no trial "
                             f"would be delivered or resumed from it")
    with checkpoint.as_directory() as folder:
        state = load_torch(Path(folder) / TRAINER_STATE, shown=shown)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpoint(f"checkpoint {shown} is damaged (not a {CHECKPOINT_FORMAT!r} trainer state)")
    return state


def holds_weights(checkpoint: tune.Checkpoint) -> bool:
    """False when the search deleted the checkpoint's weights (WEIGHTS_DELETED is there)."""
    marker = f"{checkpoint.path.rstrip('/')}/{WEIGHTS_DELETED}"
    return checkpoint.filesystem.get_file_info(marker).type == pafs.FileType.NotFound


def delete_weights(checkpoint: tune.Checkpoint, why: str) -> int:
    """Delete the trainer state of `checkpoint` (a folder Ray still lists), leaving PREDICTIONS and the
    WEIGHTS_DELETED marker, written first: a crash between the two leaves a marked folder, never a folder
    that looks damaged. Returns the bytes freed; 0 when the folder is gone (an earlier export deleted it)."""
    fs, folder = checkpoint.filesystem, checkpoint.path.rstrip("/")
    files = [f"{folder}/{TRAINER_STATE}", f"{folder}/{TRAINER_STATE}{CHECKSUM_SUFFIX}"]
    infos = [info for info in fs.get_file_info(files) if info.type == pafs.FileType.File]
    if not infos:
        return 0
    freed = sum(info.size or 0 for info in infos)
    with fs.open_output_stream(f"{folder}/{WEIGHTS_DELETED}") as stream:
        stream.write((json.dumps({"bytes": freed, "why": why}) + "\n").encode())
    for info in infos:
        fs.delete_file(info.path)
    return freed


def deleted_weights_bytes(checkpoint_folder: str, fs: pafs.FileSystem) -> int | None:
    """The bytes the search freed in a checkpoint folder (its WEIGHTS_DELETED record); None if it freed none."""
    try:
        with fs.open_input_stream(f"{checkpoint_folder.rstrip('/')}/{WEIGHTS_DELETED}") as stream:
            return int(json.loads(stream.read().decode())["bytes"])
    except (OSError, ValueError, KeyError, TypeError):  # no record (FileNotFoundError among them)
        return None


def resume_state(checkpoint: tune.Checkpoint) -> tuple[dict[str, Any] | None, str | None]:
    """The state to resume from, and a warning when it is not `checkpoint`'s.

    A damaged checkpoint is skipped for the trial's newest older one that loads (Ray keeps the best
    epoch's besides the latest); with none, (None, warning): the trial starts from scratch. The
    warning also goes to stderr (the worker's log). A read error (CheckpointReadError) is raised, never
    skipped: it fails the trial, and Ray retries it from the same checkpoint (`--max-failures`).
    """
    skipped = []
    for candidate in [checkpoint, *older_checkpoints(checkpoint)]:
        try:
            state = load_trainer_state(candidate)
        except CorruptCheckpoint as err:
            skipped.append(str(err))
            continue
        if not skipped:
            return state, None
        return state, _warn(skipped, f"resuming from {candidate.path} (epoch {state['epoch']})")
    return None, _warn(skipped, "no earlier checkpoint of this trial loads; starting the trial from scratch")


def _warn(skipped: list[str], action: str) -> str:
    text = f"warning: {'; '.join(skipped)}; {action}"
    print(text, file=sys.stderr, flush=True)
    return text


_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")


def older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The other checkpoints of the same trial folder that are older than `checkpoint`, newest first."""
    folder, name = posixpath.split(checkpoint.path.rstrip("/"))
    match = _CHECKPOINT_DIR.fullmatch(name)
    if match is None:
        return []
    entries = checkpoint.filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    older = []
    for entry in entries:
        found = _CHECKPOINT_DIR.fullmatch(entry.base_name)
        if entry.type == pafs.FileType.Directory and found and int(found[1]) < int(match[1]):
            older.append((int(found[1]), entry.path))
    return [tune.Checkpoint(path, filesystem=checkpoint.filesystem) for _, path in sorted(older, reverse=True)]
