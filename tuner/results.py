"""What a finished search leaves: RUN/trials.parquet, RUN/epochs.parquet, RUN/best/ and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import pyarrow.parquet as pq

from . import data
from .checkpoint import atomic_write, model_payload, write_best
from .config import METRICS, field_names, is_better, make_config
from .engine import Trainer
from .trainable import load_trainer_state

# Ray's bookkeeping columns that say nothing about the model; left out of epochs.parquet.
_RAY_COLUMNS = {"done", "should_checkpoint", "date", "timestamp", "time_this_iter_s", "pid", "hostname",
                "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "config"}


def trial_status(result, max_epochs: int) -> str:
    if result.error is not None:
        return "errored"
    epochs = int((result.metrics or {}).get("training_iteration", 0))
    return "stopped_early" if epochs < max_epochs else "completed"


def trial_rows(grid, settings, searched: list[str]) -> list[dict[str, Any]]:
    """One row per trial: id, status, epochs, best metric values, seconds, every hyperparameter."""
    mode = settings.mode
    hyperparameters = list(dict.fromkeys([*searched, *sorted(k for r in grid for k in (r.config or {}))]))
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if frame is not None else []
        best = None
        for epoch in history:
            if is_better(mode, epoch.get(settings.metric), best and best[settings.metric]):
                best = epoch
        metrics = result.metrics or {}
        row = {
            "trial_id": metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_"),
            "status": trial_status(result, settings.max_epochs),
            "epochs": int(metrics.get("training_iteration", 0)),
            "stopped_early": trial_status(result, settings.max_epochs) == "stopped_early",
            "best_epoch": int(best["epoch"]) if best else None,
            "val_acc": float(best["val_acc"]) if best else None,
            "val_loss": float(best["val_loss"]) if best else None,
            "seconds": float(metrics.get("time_total_s", 0.0)),
            "node": metrics.get("node"),
        }
        config = result.config or {}
        # `epochs` (the schedule length) is max_epochs for every trial; the column means epochs run.
        row.update({name: config.get(name) for name in hyperparameters if name in field_names() and name != "epochs"})
        rows.append(row)
    return rows


def epoch_rows(grid) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None:
            continue
        for epoch in frame.to_dict("records"):
            rows.append({k: v for k, v in epoch.items() if k not in _RAY_COLUMNS and not k.startswith("config/")})
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """Parquet through a temporary file, so a reader never sees half a table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]) if rows else pa.table({})
    atomic_write(path, lambda handle: pq.write_table(table, handle))


def export_best(grid, run_dir: Path, settings, splits: data.ImageSplits) -> dict[str, Any] | None:
    """Copy the best epoch of the best trial to RUN/best/; evaluate it on the test split if there is one."""
    try:
        best = grid.get_best_result(settings.metric, settings.mode, scope="all", filter_nan_and_inf=True)
    except RuntimeError:
        return None  # no trial reported anything
    checkpoint = best.get_best_checkpoint(settings.metric, settings.mode) if best.best_checkpoints else None
    if checkpoint is None:
        return None
    metrics = next(m for c, m in best.best_checkpoints if c.path == checkpoint.path)
    state = load_trainer_state(checkpoint)
    epoch_metrics = {k: v for k, v in metrics.items() if k not in _RAY_COLUMNS and not k.startswith("config")}
    payload = model_payload(state["model"], state, state["epoch"], {**epoch_metrics, "trial_id": metrics.get("trial_id")})
    if splits.test:
        payload["metrics"].update(evaluate_payload(payload, splits))
    write_best(run_dir / "best", payload)
    return payload


def evaluate_payload(payload: dict[str, Any], splits: data.ImageSplits, split: str = "test") -> dict[str, float]:
    """Metrics of a saved model on one split of the data (test: once, never used for selection)."""
    config = make_config({**payload["config"], "weights": "none"})
    if config.precision == "fp16" and not torch.cuda.is_available():  # trained on a GPU, evaluated here
        config.precision = "fp32"
    trainer = Trainer(config, splits, num_workers=0)
    trainer.model.load_state_dict(payload["model"])
    loader = trainer.test_loader if split == "test" else trainer.val_loader
    return trainer.evaluate(loader, prefix=split)


def export_results(grid, run_dir: Path, settings, searched: list[str], splits: data.ImageSplits,
                   location: str | None = None) -> None:
    """Write the tables and best/ into `run_dir` (a local folder); `location` is where the user finds them."""
    rows = trial_rows(grid, settings, searched)
    write_table(rows, run_dir / "trials.parquet")
    write_table(epoch_rows(grid), run_dir / "epochs.parquet")
    payload = export_best(grid, run_dir, settings, splits)
    print_summary(rows, payload, location or str(run_dir), settings, searched)


def print_summary(rows, payload, location: str, settings, searched: list[str], top: int = 5) -> None:
    metric, reverse = settings.metric, METRICS[settings.metric] == "max"
    done = [r for r in rows if r[metric] is not None]
    done.sort(key=lambda r: r[metric], reverse=reverse)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped_early", "errored")}
    print(f"\n{len(rows)} trials: {counts['completed']} completed, {counts['stopped_early']} stopped early by "
          f"ASHA, {counts['errored']} errored; {sum(r['epochs'] for r in rows)} trial-epochs")
    print(f"top trials by {metric}:")
    for row in done[:top]:
        params = ", ".join(f"{k}={_short(row[k])}" for k in searched if row[k] is not None)
        print(f"  {row['trial_id']}  {metric} {row[metric]:.4f}  epochs {row['epochs']:>2}  {params}")
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
