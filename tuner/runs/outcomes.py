"""What became of a trial, one rule for every view of a search: no Ray here.

The finished tables (search/results.py, from Ray's ResultGrid), the report of a search still running
(report/run.py, from Ray's trial_*/result.json files) and the progress lines (search/progress.py, from
Ray's Trial objects) all say a trial's status, best epoch, error and trials.parquet row through this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..train.config import field_names, is_better
from .budget import ran_whole_budget

# A trial's status in trials.parquet (stopped_early: by ASHA or the time budget; diverged: a NaN/inf loss;
# interrupted: the search was stopped (Ctrl-C, SIGTERM) before the trial ended, `tuner resume` continues it;
# running: a search still going has trials without an outcome yet).
STATUSES = ("completed", "stopped_early", "diverged", "errored", "interrupted", "running")

# A trial's number: 1, 2, 3 in the order the search created its trials, kept across `tuner resume` (new trials
# go on counting). The searcher puts it in the trial's config under this key (no hyperparameter: the
# trainable takes it out), the trainable in every report; trials.parquet and epochs.parquet have the column.
NUMBER = "number"

# trials.parquet, one row per trial; every hyperparameter follows as its own column (hyperparameter_columns).
TRIAL_COLUMNS = (NUMBER, "trial_id", "status", "epochs_run", "steps", "budget_steps", "stopped_early", "best_epoch",
                 "best_step", "val_acc", "val_loss", "seconds", "node", "error", "warning")
# Columns renamed since: a run made before is read under today's names (`epochs` was the epochs run,
# not the schedule length TrainConfig.epochs, which is no column of the table).
RENAMED_COLUMNS = {"epochs": "epochs_run"}

# Ray's bookkeeping in each result that says nothing about the model; left out of epochs.parquet.
RAY_COLUMNS = frozenset({"done", "should_checkpoint", "date", "timestamp", "time_this_iter_s", "pid", "hostname",
                         "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
                         "config"})


def diverged(last: Mapping[str, Any]) -> bool:
    """The trial's last report says its loss became NaN or infinite (see trainable.train_trial)."""
    return last.get("diverged") is True


def spent_whole_budget(last: Mapping[str, Any], budget_steps: int) -> bool:
    """The trial's last report spent the search's whole budget (else ASHA or the time budget stopped it)."""
    return ran_whole_budget(last.get("budget_steps"), budget_steps)


def trial_status(last: Mapping[str, Any], budget_steps: int, *, failed: bool, ended: bool) -> str:
    """One of STATUSES, from the trial's last report (`{}` before its first) and what Ray says of it.

    failed: the trial failed and Ray did not recover it by a retry. ended: it will report no more
    (every trial, once the search has finished). `budget_steps` is the search's budget (budget.steps).
    """
    if diverged(last):  # a result, not a crash: the trial ended itself cleanly
        return "diverged"
    if failed:
        return "errored"
    if spent_whole_budget(last, budget_steps):
        return "completed"
    return "stopped_early" if ended else "running"


def optuna_state(status: str, value: Any, stopped_as_complete: bool = False) -> str | None:
    """The Optuna TrialState (its name) a trial that ended with `status` and best value `value` is told as:
    COMPLETE with the value when it ran its whole budget (or diverged after a result: its best round before
    the NaN, as its row has it), PRUNED when ASHA or the time budget stopped it (COMPLETE with
    `stopped_as_complete`), FAIL when it errored or never had a result. None while it has not ended
    (interrupted, running): the study keeps it RUNNING, for resume to continue."""
    if status in ("interrupted", "running"):
        return None
    if status == "errored" or not has_result(value):
        return "FAIL"
    if status == "stopped_early" and not stopped_as_complete:
        return "PRUNED"
    return "COMPLETE"


def best_report(reports: Iterable[Mapping[str, Any]], metric: str, mode: str) -> Mapping[str, Any] | None:
    """The report of the trial's best epoch by `metric` (NaN and None never win); None if there is none.

    On a tie the later report wins, as Ray's checkpoint manager keeps the later of two equal scores
    (num_to_keep=1): so best_epoch is the epoch whose checkpoint best/ is made from.
    """
    best = None
    for report in reports:
        value = report.get(metric)
        if is_better(mode, value, best and best[metric]) or (best is not None and value == best[metric]):
            best = report
    return best


def diverged_error(last: Mapping[str, Any]) -> str:
    """Why a diverged trial ended, in the words of the Trainer's Diverged error."""
    from ..train.engine import Diverged  # torch and torchvision: only when a trial diverged

    return str(Diverged(int(last["epoch"]), last["train_loss"]))


def last_error_line(text: str) -> str:
    """The exception line that ends Ray's error trace ('' if none): error.txt's `Failure # N` headers skipped."""
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in reversed(lines) if line and not line.startswith("Failure # ")), "")


def trial_name(number: int | None, trial_id: str) -> str:
    """`trial 3 (634b7ffc)`: how the summary, the report and a trial's first progress line name a trial;
    `trial 634b7ffc` for one without a number (a run made before trials were numbered)."""
    return f"trial {trial_id}" if number is None else f"trial {number} ({trial_id})"


def trial_row(trial_id: str, last: Mapping[str, Any], reports: list[Mapping[str, Any]], *, number: int | None,
              status: str, error: str | None, metric: str, mode: str) -> dict[str, Any]:
    """A trial's row of trials.parquet (TRIAL_COLUMNS) from its last report and its reports in order.

    `number` is the trial's NUMBER (from its config: a trial that errored before its first report has one
    too); None for a run made before trials were numbered. The metric columns are those of its best report;
    `epochs_run` and `steps` are what it ran.
    """
    best = best_report(reports, metric, mode)
    return {
        NUMBER: number,
        "trial_id": trial_id,
        "status": status,
        "epochs_run": int(last.get("epoch", 0)),
        "steps": int(last.get("step", 0)),
        "budget_steps": int(last.get("budget_steps", 0)),
        "stopped_early": status == "stopped_early",
        "best_epoch": int(best["epoch"]) if best else None,
        "best_step": int(best["step"]) if best else None,
        "val_acc": float(best["val_acc"]) if best else None,
        "val_loss": float(best["val_loss"]) if best else None,
        "seconds": float(last.get("time_total_s", 0.0)),
        "node": last.get("node"),
        "error": error,
        # A damaged checkpoint skipped when the trial resumed (see trainable.resume_state).
        "warning": "; ".join(str(r["warning"]) for r in reports if r.get("warning")) or None,
    }


def hyperparameter_columns(names: Iterable[str]) -> list[str]:
    """The names among `names` that are trials.parquet hyperparameter columns, in their order.

    TrainConfig's `epochs` and `steps` (the schedule's length) come from the budget: no column; the
    table's `epochs_run` and `steps` say what ran.
    """
    return [name for name in names if name in field_names() and name not in ("epochs", "steps")]


def with_current_names(row: dict[str, Any]) -> dict[str, Any]:
    """A trials.parquet row under today's column names (RENAMED_COLUMNS), for runs made before a rename."""
    current = {}
    for name, value in row.items():
        new = RENAMED_COLUMNS.get(name)
        current[new if new and new not in row else name] = value
    return current


def model_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report without Ray's bookkeeping (RAY_COLUMNS, the flattened config): an epochs.parquet row."""
    return {k: v for k, v in report.items() if k not in RAY_COLUMNS and not k.startswith("config/")}


def has_result(value: Any) -> bool:
    """A metric value a trial can be ranked by: a finite number (not None, NaN or infinite)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def ranked(rows: Iterable[Mapping[str, Any]], metric: str, mode: str) -> list:
    """Trials with a result, best first by `metric` (mode "max" or "min")."""
    done = [row for row in rows if has_result(row.get(metric))]
    return sorted(done, key=lambda row: row[metric], reverse=mode == "max")


def status_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Trials by status, every one of STATUSES (0 where none)."""
    rows = list(rows)
    return {status: sum(row["status"] == status for row in rows) for status in STATUSES}
