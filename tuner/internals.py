"""Every private name of Ray, Optuna and torch that tuner uses, and nowhere else (tests/test_internals.py
checks both: that no other module names one, and that each still exists with the shape used here on the
versions pyproject allows). An upgrade that moves one fails that fast test, not a slow search.

Each is here because the public API has no way to do the same; the reason is beside it. Nothing is imported
at the top: every layer may import this module (train/ gets torch's, search/ Ray's and Optuna's).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def running_trial(study, number: int):
    """An `optuna.Trial` to suggest and report through for the study's trial `number`, one the study asked
    before (perhaps in an earlier process: a resumed search). Optuna hands a Trial out only from ask(); the
    constructor wants the storage's trial id, which only the storage's own lookup gives."""
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def in_distribution(distribution, value: Any) -> bool:
    """The value lies in the Optuna distribution (its range, step and choices): Optuna's own check."""
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):  # a categorical value that is not among the choices
        return False


def restored_tune_config(tuner):
    """The TuneConfig of a Tuner that `Tuner.restore` made: the only handle on the search algorithm Ray
    restores before fit() (Ray has no public way to raise a restored search's number of trials). None if
    this Ray keeps it elsewhere."""
    return getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)


def restoring_search(search_alg, on_restored: Callable[[Any, int], None], *, trials: int, run: str | None):
    """Wrap a restored Tuner's search algorithm in a SearchGenerator that, as Ray restores the search inside
    fit(): raises its total to `trials` (a finished search goes on), points its new trials at `run` (a moved
    local run: Ray's saved state names where the run was), then calls `on_restored(base searcher, total)`.

    Ray's SearchGenerator keeps the count and the experiment in private members; Ray never pickles this
    wrapper (the run's saved state holds its counts), so it may be a local class.
    """
    import copy
    from pathlib import Path

    from ray.tune.search import SearchGenerator

    class RestoringSearch(SearchGenerator):
        def set_state(self, state: dict) -> None:
            super().set_state(state)
            if trials > self._total_samples:
                self._total_samples, self._finished = trials, False
            storage = self._experiment.spec.get("storage")
            if storage is not None and run is not None:  # new trials go to RUN, as Ray's restore does for old ones
                storage = copy.copy(storage)
                storage.storage_fs_path, storage.experiment_dir_name = str(Path(run).parent), Path(run).name
                self._experiment.spec["storage"] = storage
            base = self.searcher
            while hasattr(base, "searcher"):  # ConcurrencyLimiter -> the study's searcher
                base = base.searcher
            on_restored(base, self._total_samples)

    return RestoringSearch(search_alg.searcher if isinstance(search_alg, SearchGenerator) else search_alg)


def kept_checkpoints(trial) -> list[tuple[Any, dict, bool, bool]]:
    """The checkpoints Ray keeps for a trial: (checkpoint, its metrics, is the trial's best, is its latest).
    Ray's Trial offers the latest (`trial.checkpoint`) but the best only through its checkpoint manager;
    pruning.py must know both to delete nothing that delivery or resume still needs."""
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    latest_path = latest.checkpoint.path if latest is not None else None
    kept = [(result.checkpoint, result.metrics, True, result.checkpoint.path == latest_path)
            for result in manager.best_checkpoint_results]
    if latest is not None and all(checkpoint.path != latest_path for checkpoint, *_ in kept):
        kept.append((latest.checkpoint, latest.metrics, False, True))
    return kept


def listen_on_loopback_only() -> None:
    """Make the local Ray that ray.init starts listen on 127.0.0.1 only, not on every interface.

    Ray binds its gRPC servers (GCS, raylet, workers, object manager) to the loopback interface when the
    node's IP is the loopback one, which it picks when "clusters" are off: its default on macOS and
    Windows, set here by the variable its child processes read and by the constant this process read
    when Ray was imported. No public setting does this.
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def mlflow_client(callback):
    """The MlflowClient of Ray's MLflowLoggerCallback (its `mlflow_util`): Ray makes one on setup and has
    no public getter; a second client would open the tracking store again."""
    return callback.mlflow_util._get_client()


def mlflow_trial_runs(callback) -> dict:
    """MLflowLoggerCallback's own map of Ray trial -> MLflow run id, which its logging reads: a trial resumed
    by `tuner resume` must log on to its earlier run, so the map is filled before Ray's callback looks."""
    return callback._trial_runs


def stop_wandb_loggers(callback) -> None:
    """Ask each of WandbLoggerCallback's logging actors to finish its W&B run, as Ray's callback does for a
    trial that ends; Ray has no public call for the trials that are still running when the search ends."""
    for trial in list(callback._trial_logging_actors):
        callback._signal_logging_actor_stop(trial)


def foreach_copy_(targets: list, sources: list) -> None:
    """torch._foreach_copy_: one fused kernel for a list of tensors, as torch.optim.swa_utils does."""
    import torch

    torch._foreach_copy_(targets, sources)


def foreach_lerp_(targets: list, sources: list, weight: float) -> None:
    """torch._foreach_lerp_: the fused EMA update of torch.optim.swa_utils.get_ema_multi_avg_fn."""
    import torch

    torch._foreach_lerp_(targets, sources, weight)
