"""What a finished search leaves: RUN/trials.parquet, RUN/epochs.parquet, RUN/best/ and a summary."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import first_line
from ..runs import outcomes
from ..runs.budget import SearchBudget
from ..runs.outcomes import has_result
from ..testing.faults import fault_point
from ..train import folders
from ..train.checkpoint import CorruptCheckpoint, atomic_write, model_payload, write_best
from ..train.config import METRICS
from ..train.engine import resolve_device
from ..train.evaluation import load_trained
from ..train.model import full_model_state
from .trainable import load_trainer_state


def trial_status(result, budget: SearchBudget) -> str:
    """completed, stopped_early (by ASHA or the time budget), diverged (NaN/inf loss) or errored."""
    # Ray sets a finished trial's error only when it gave up on it (its final state is ERROR).
    return outcomes.trial_status(result.metrics or {}, budget.steps, failed=result.error is not None, ended=True)


def trial_error(result) -> str | None:
    """One line saying why a trial errored or diverged; None for the others."""
    metrics = result.metrics or {}
    if outcomes.diverged(metrics):
        return outcomes.diverged_error(metrics)
    error = result.error
    if error is None:
        return None
    if isinstance(error, str):  # Ray's text trace, when the exception could not be unpickled
        return outcomes.last_error_line(error)
    cause = getattr(error, "cause", None)  # a RayTaskError wraps the trial's own exception
    return first_line(cause if isinstance(cause, BaseException) else error)


def history(result) -> list[dict[str, Any]]:
    """A trial's reported epochs in order, one per epoch: an epoch trained again after resuming from an
    older checkpoint (a damaged newer one) keeps its last report. Null, not NaN, where a column is unset."""
    frame = result.metrics_dataframe
    if frame is None:
        return []
    records = frame.to_dict("records")
    # Columns with strings or booleans (warning, diverged) read as NaN in rows that lack them.
    sparse = {k for row in records for k, v in row.items() if isinstance(v, (str, bool))}
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in records:
        row = {k: None if k in sparse and isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        by_epoch.pop(row.get("epoch"), None)
        by_epoch[row.get("epoch")] = row
    return sorted(by_epoch.values(), key=lambda row: row.get("epoch") or 0)


def trial_rows(grid, settings, searched: list[str], budget: SearchBudget) -> list[dict[str, Any]]:
    """One row per trial (outcomes.trial_row), with every hyperparameter any trial has (null where not)."""
    hyperparameters = outcomes.hyperparameter_columns(dict.fromkeys(
        [*searched, *sorted(k for r in grid for k in (r.config or {}))]))
    rows = []
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        row = outcomes.trial_row(trial_id, metrics, history(result), status=trial_status(result, budget),
                                 error=trial_error(result), metric=settings.metric, mode=settings.mode)
        rows.append({**row, **{name: config.get(name) for name in hyperparameters}})
    return rows


def epoch_rows(grid) -> list[dict[str, Any]]:
    return [outcomes.model_metrics(epoch) for result in grid for epoch in history(result)]


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """Parquet through a temporary file, so a reader never sees half a table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]) if rows else pa.table({})
    atomic_write(path, lambda handle: pq.write_table(table, handle))


def ranked_checkpoints(grid, metric: str, mode: str) -> list[tuple[Any, dict[str, Any]]]:
    """Every kept checkpoint of every trial with its epoch's metrics, best first (non-finite left out).

    Each trial keeps its best epoch's checkpoint, so the first is the search's best epoch.
    """
    kept = [(checkpoint, metrics) for result in grid for checkpoint, metrics in (result.best_checkpoints or [])
            if has_result(metrics.get(metric))]
    return sorted(kept, key=lambda pair: pair[1][metric], reverse=mode == "max")


def export_best(grid, run_dir: Path, settings, splits: folders.ImageSplits) -> dict[str, Any] | None:
    """Copy the best epoch of the best trial to RUN/best/; evaluate it on the test split if there is one.

    A damaged checkpoint is never loaded: it is skipped with a warning for the next best one.
    """
    for checkpoint, metrics in ranked_checkpoints(grid, settings.metric, settings.mode):
        try:
            state = load_trainer_state(checkpoint)
        except CorruptCheckpoint as err:
            print(f"warning: {err}; using the next best checkpoint", file=sys.stderr, flush=True)
            continue
        return _write_best(state, metrics, run_dir, splits)
    return None  # no trial reported a usable checkpoint


def _write_best(state: dict[str, Any], metrics: dict[str, Any], run_dir: Path,
                splits: folders.ImageSplits) -> dict[str, Any]:
    epoch_metrics = outcomes.model_metrics(metrics)
    model = full_model_state(state, f"checkpoint of trial {metrics.get('trial_id')}")
    payload = model_payload(model, state, state["epoch"], {**epoch_metrics, "trial_id": metrics.get("trial_id")})
    if splits.test:
        payload["metrics"].update(evaluate_payload(payload, splits))
    write_best(run_dir / "best", payload)
    return payload


def evaluate_payload(payload: dict[str, Any], splits: folders.ImageSplits, split: str = "test") -> dict[str, float]:
    """Metrics of a saved model on one split of the data (test: once, never used for selection)."""
    # In the precision and layout the trial validated in (no probe here), so the metrics are comparable.
    trained = load_trained(payload, resolve_device("auto"), as_trained=True)
    return trained.evaluate(splits.test if split == "test" else splits.val, prefix=split).metrics


def export_results(grid, run_dir: Path, settings, searched: list[str], splits: folders.ImageSplits,
                   budget: SearchBudget, location: str | None = None) -> None:
    """Write the tables and best/ into `run_dir` (a local folder); `location` is where the user finds them."""
    rows = trial_rows(grid, settings, searched, budget)
    write_table(rows, run_dir / "trials.parquet")
    write_table(epoch_rows(grid), run_dir / "epochs.parquet")
    fault_point("export")
    payload = export_best(grid, run_dir, settings, splits)
    print_summary(rows, payload, location or str(run_dir), settings, searched)
    if settings.keep_checkpoints == "best":
        best_trial = payload["metrics"]["trial_id"] if payload else None
        dropped, size = drop_finished_checkpoints(grid, rows, keep=best_trial)
        if dropped:
            print(f"deleted the checkpoints of {dropped} finished trials other than the best ({size / 2**20:.1f} MiB); "
                  f"--keep-checkpoints all keeps them")


def drop_finished_checkpoints(grid, rows: list[dict[str, Any]], keep: str | None) -> tuple[int, int]:
    """Delete the checkpoint folders of finished trials but `keep` (the best); returns (trials, bytes).

    Errored trials keep theirs: `tuner resume` restarts them from there. Finished trials are never
    trained again, best/ already holds the best model, and on a cluster every kept checkpoint is
    storage paid for.
    """
    finished = {row["trial_id"] for row in rows if row["status"] != "errored" and row["trial_id"] != keep}
    trials = freed = 0
    for result in grid:
        if Path(result.path).name.removeprefix("trial_") not in finished:
            continue
        fs = result.filesystem
        folders = [entry for entry in fs.get_file_info(pafs.FileSelector(result.path, allow_not_found=True))
                   if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_")]
        for entry in folders:
            freed += sum(f.size or 0 for f in fs.get_file_info(pafs.FileSelector(entry.path, recursive=True)))
            fs.delete_dir(entry.path)
        trials += bool(folders)
    return trials, freed


def print_summary(rows, payload, location: str, settings, searched: list[str], top: int = 5) -> None:
    metric = settings.metric
    done, counts = outcomes.ranked(rows, metric, METRICS[metric]), outcomes.status_counts(rows)
    diverged = f"{counts['diverged']} diverged, " if counts["diverged"] else ""
    print(f"\n{len(rows)} trials: {counts['completed']} completed, {counts['stopped_early']} stopped early by "
          f"ASHA, {diverged}{counts['errored']} errored; {sum(r['steps'] for r in rows)} trial-steps, "
          f"{sum(r['epochs_run'] for r in rows)} trial-epochs")
    for row in rows:
        if row["error"]:
            print(f"  {row['trial_id']} {row['status']}: {row['error']}")
        if row["warning"]:
            print(f"  {row['trial_id']} {row['warning']}")
    print(f"top trials by {metric}:")
    for row in done[:top]:
        params = ", ".join(f"{k}={_short(row[k])}" for k in searched if row[k] is not None)
        print(f"  {row['trial_id']}  {metric} {row[metric]:.4f}  steps {row['steps']:>5}  {params}")
    if payload is None:
        print("no trial reported a result; nothing exported")
        return
    print(f"best: trial {payload['metrics']['trial_id']} epoch {payload['epoch']}, {metric} "
          f"{payload['metrics'][metric]:.4f}" + (f", test_acc {payload['metrics']['test_acc']:.4f}"
                                                  if "test_acc" in payload["metrics"] else ""))
    print(f"weights: {payload['weights']['name']}")
    best = f"{location.rstrip('/')}/best"
    print(f"best model: {best}" + ("" if "://" in location else f"  (tuner predict --model {best} IMAGE)"))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
