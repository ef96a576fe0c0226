"""What a finished search leaves: RUN/trials.parquet, RUN/epochs.parquet, RUN/best/ and a summary."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import first_line
from ..runs import outcomes
from ..runs.budget import SearchBudget
from ..runs.outcomes import has_result
from ..runs.selection import (
    ALPHA,
    CANDIDATES,
    Candidate,
    Selection,
    compared,
    load_candidates,
    save_candidates,
    select,
)
from ..testing.faults import fault_point
from ..train import folders
from ..train.checkpoint import CorruptCheckpoint, atomic_write, model_payload, write_best
from ..train.config import METRICS
from ..train.engine import resolve_device
from ..train.evaluation import load_trained
from ..train.model import full_model_state
from .pruning import deleted_so_far
from .trainable import checkpoint_candidate, holds_weights, load_trainer_state


def trial_status(result, budget: SearchBudget, ended: bool = True) -> str:
    """completed, stopped_early (by ASHA or the time budget), diverged (NaN/inf loss), errored, or (`ended`
    False: the search was interrupted before the trial ended) interrupted."""
    # Ray sets a finished trial's error only when it gave up on it (its final state is ERROR).
    status = outcomes.trial_status(result.metrics or {}, budget.steps, failed=result.error is not None,
                                   ended=ended)
    return "interrupted" if status == "running" else status


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


def trial_rows(grid, settings, searched: list[str], budget: SearchBudget,
               ended: set[str] | None = None) -> list[dict[str, Any]]:
    """One row per trial (outcomes.trial_row) in order of number, with every hyperparameter any trial has (null
    where not).

    `ended`: the trials that ended in a search that was interrupted (None: the search ended, and every trial
    with it); the others are `interrupted`.
    """
    hyperparameters = outcomes.hyperparameter_columns(dict.fromkeys(
        [*searched, *sorted(k for r in grid for k in (r.config or {}))]))
    rows = []
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        status = trial_status(result, budget, ended=ended is None or trial_id in ended)
        row = outcomes.trial_row(trial_id, metrics, history(result), number=config.get(outcomes.NUMBER),
                                 status=status, error=trial_error(result), metric=settings.metric,
                                 mode=settings.mode)
        rows.append({**row, **{name: config.get(name) for name in hyperparameters}})
    # In order of number: Ray's grid of a resumed search lists its restored trials in another order.
    return sorted(rows, key=lambda row: (row[outcomes.NUMBER] is None, row[outcomes.NUMBER] or 0))


def epoch_rows(grid) -> list[dict[str, Any]]:
    return [outcomes.model_metrics(epoch) for result in grid for epoch in history(result)]


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """Parquet through a temporary file, so a reader never sees half a table."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]) if rows else pa.table({})
    atomic_write(path, lambda handle: pq.write_table(table, handle))


def ranked_checkpoints(grid, metric: str, mode: str) -> list[tuple[Any, dict[str, Any]]]:
    """Every kept checkpoint of every trial with its epoch's metrics, best first (non-finite left out).

    Each trial keeps its best epoch's checkpoint, so the first is the search's best epoch. Trials that tie
    go by trial id, as the selection's candidates do (_candidates): not by the grid's order, which a resume
    changes, so a resumed search's export delivers the same trial as before, not one whose checkpoints
    the earlier export deleted.
    """
    kept = [(checkpoint, metrics) for result in grid for checkpoint, metrics in (result.best_checkpoints or [])
            if has_result(metrics.get(metric))]
    sign = -1 if mode == "max" else 1
    return sorted(kept, key=lambda pair: (sign * pair[1][metric], pair[1].get("trial_id") or ""))


SELECTION_EVIDENCE = "val_predictions.npz"  # in the run folder: the candidates compared (selection.save_candidates)
SELECTION_COLUMNS = ("delivered", "within_noise", "mcnemar_p", "holm_p", "diff_low", "diff_high")  # trials.parquet


@dataclass(frozen=True)
class Delivery:
    """The checkpoints to export, the delivered trial's first (then the rest by the metric, fallbacks for a
    damaged one), why it was chosen, and the comparisons with the best (None under the highest rule)."""

    order: list[tuple[Any, dict[str, Any]]]
    reason: str
    selection: Selection | None


def choose_delivery(grid, settings, run_dir: Path | None = None) -> Delivery:
    """Which trial's best checkpoint the search delivers: the run setting `selection`'s rule.

    within_noise (runs/selection.py): the cheapest of the top trials indistinguishable from the best on
    the validation images; highest: the best by the metric, compared all the same so that the summary and
    the tables say which trials are within noise of it. Without per-image predictions (checkpoints
    from before they were saved) the highest, and the reason says why. `run_dir`'s val_predictions.npz
    holds the candidates of an earlier export, whose checkpoints may be gone; it is rewritten.
    """
    ranked = ranked_checkpoints(grid, settings.metric, settings.mode)
    highest = f"the highest {settings.metric}"
    if not ranked:
        return Delivery(ranked, f"{highest} (selection: {settings.selection})", None)
    candidates = _candidates(ranked, settings, run_dir)
    if candidates is None:
        return Delivery(ranked, f"{highest}: the checkpoints hold no per-image predictions to compare", None)
    # Trials whose weights the search deleted (pruning.py) are compared, never delivered.
    chosen = select(candidates, deliverable={m.get("trial_id") for c, m in ranked if holds_weights(c)})
    if settings.selection == "highest":  # delivered as before; the comparisons still say who is within noise
        return Delivery(ranked, f"{highest} (selection: highest)", replace(chosen, delivered=candidates[0].trial_id))
    first = next((pair for pair in ranked if pair[1].get("trial_id") == chosen.delivered), None)
    if first is None:  # its checkpoint is gone: deleted by hand after an earlier export
        return Delivery(ranked, f"{highest}: the checkpoint of trial {chosen.delivered} is gone", None)
    return Delivery([first, *(pair for pair in ranked if pair is not first)], chosen.reason, chosen)


def _checkpoint_name(ranked: list[tuple[Any, dict[str, Any]]], trial_id: str) -> str:
    """`trial N (id)`, N as the trial's checkpoints report it."""
    number = next((m.get(outcomes.NUMBER) for _, m in ranked if m.get("trial_id") == trial_id), None)
    return outcomes.trial_name(number, trial_id)


def _candidates(ranked: list[tuple[Any, dict[str, Any]]], settings, run_dir: Path | None) -> list[Candidate] | None:
    """The trials the rule compares (selection.compared: the top trials and the best probe head), each at its
    best checkpoint with its per-image correctness, the best first; a trial whose checkpoint is gone (deleted
    by an earlier export) as run_dir's record of that export has it. None if one of the top trials has no
    predictions either way."""
    evidence = run_dir / SELECTION_EVIDENCE if run_dir else None
    recorded = {c.trial_id: c for c in (load_candidates(evidence) if evidence else [])}
    found, seen = {}, set()
    for checkpoint, metrics in ranked:  # best first: a trial's first checkpoint is its best
        trial_id = metrics.get("trial_id")
        if trial_id in seen:
            continue
        seen.add(trial_id)
        beyond = len(seen) > CANDIDATES  # below the top, only the best probe head is read (step 0)
        if beyond and (metrics.get("step") or any(c.is_probe for c in found.values())):
            continue
        candidate = checkpoint_candidate(checkpoint, metrics, settings.metric)
        if candidate is None and trial_id not in recorded:
            if beyond:
                continue
            return None
        found[trial_id] = candidate or recorded[trial_id]
    # Ties by trial id: the same best and order in every export, whichever checkpoints are left.
    sign = -1 if settings.mode == "max" else 1
    candidates = compared(sorted([*found.values(), *(c for c in recorded.values() if c.trial_id not in found)],
                                 key=lambda c: (sign * c.score, c.trial_id)))
    if len({c.correct.shape for c in candidates}) > 1:
        return None
    if evidence:
        atomic_write(evidence, lambda handle: save_candidates(handle, candidates))
    return candidates


def delivered_trial(run_dir: Path) -> tuple[str, str]:
    """The trial the search delivered in RUN/best/ and why (its `selection`), from best/metrics.json."""
    metrics = json.loads((Path(run_dir) / "best" / "metrics.json").read_text())
    return metrics["trial_id"], metrics["selection"]


def selection_columns(rows: list[dict[str, Any]], delivery: Delivery, delivered: str | None) -> None:
    """Add SELECTION_COLUMNS to `rows`: which trial was delivered, and each compared trial against the best."""
    compared = {c.trial_id: c for c in (delivery.selection.comparisons if delivery.selection else [])}
    for row in rows:
        comparison = compared.get(row["trial_id"])
        row["delivered"] = row["trial_id"] == delivered
        for column in SELECTION_COLUMNS[1:]:
            row[column] = getattr(comparison, column) if comparison else None


def export_best(grid, run_dir: Path, settings, splits: folders.ImageSplits,
                delivery: Delivery | None = None) -> dict[str, Any] | None:
    """Copy the delivered trial's best epoch (choose_delivery) to RUN/best/; evaluate it on the test split if
    there is one. best/metrics.json's `selection` says why it was chosen.

    A damaged checkpoint is never loaded: it is skipped with a warning for the next best one. One that
    cannot be read (CheckpointReadError, after load_torch's retries) stops the export: it is raised, and
    nothing is written, since delivering the next best would pass over a checkpoint that may be whole.
    """
    delivery = delivery or choose_delivery(grid, settings)
    reason = delivery.reason
    for checkpoint, metrics in delivery.order:
        try:
            state = load_trainer_state(checkpoint)
        except CorruptCheckpoint as err:
            print(f"warning: {err}; using the next best checkpoint", file=sys.stderr, flush=True)
            damaged = _checkpoint_name(delivery.order, delivery.order[0][1].get("trial_id"))
            reason = f"the checkpoint of {damaged} is damaged: the next by {settings.metric}"
            continue
        return _write_best(state, {**metrics, "selection": reason}, run_dir, splits)
    return None  # no trial reported a usable checkpoint


def _write_best(state: dict[str, Any], metrics: dict[str, Any], run_dir: Path,
                splits: folders.ImageSplits) -> dict[str, Any]:
    epoch_metrics = outcomes.model_metrics(metrics)
    model = full_model_state(state, f"checkpoint of trial {metrics.get('trial_id')}")
    payload = model_payload(model, state, state["epoch"], {**epoch_metrics, "trial_id": metrics.get("trial_id"),
                                                           "selection": metrics["selection"]})
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
                   budget: SearchBudget, location: str | None = None,
                   ended: set[str] | None = None) -> list[dict[str, Any]]:
    """Write the tables and best/ into `run_dir` (a local folder); `location` is where the user finds them.
    Returns the rows of trials.parquet.

    `ended` (trial_rows) is given when the search was interrupted: then its unfinished trials are
    `interrupted`, and no checkpoint is deleted (`tuner resume` goes on from them).
    """
    rows = trial_rows(grid, settings, searched, budget, ended)
    delivery = choose_delivery(grid, settings, run_dir)
    selection_columns(rows, delivery, delivery.order[0][1].get("trial_id") if delivery.order else None)
    write_table(rows, run_dir / "trials.parquet")
    write_table(epoch_rows(grid), run_dir / "epochs.parquet")
    fault_point("export")
    payload = export_best(grid, run_dir, settings, splits, delivery)
    if payload and payload["metrics"]["trial_id"] != delivery.order[0][1].get("trial_id"):  # a damaged checkpoint
        selection_columns(rows, delivery, payload["metrics"]["trial_id"])
        write_table(rows, run_dir / "trials.parquet")
    print_summary(rows, payload, location or str(run_dir), settings, searched)
    print_selection(delivery.selection, payload, rows)
    if settings.keep_checkpoints == "best" and ended is None:
        best_trial = payload["metrics"]["trial_id"] if payload else None
        dropped, size = drop_finished_checkpoints(grid, rows, keep=best_trial)
        during, during_size = deleted_so_far()
        if dropped or during:
            pruned = (f"; during the search, the weights of {during} checkpoints as soon as no trial could be "
                      f"delivered or resumed from them ({during_size / 2**20:.1f} MiB)") if during else ""
            print(f"deleted the checkpoints of {dropped} finished trials other than the best ({size / 2**20:.1f} MiB)"
                  f"{pruned}; --keep-checkpoints all keeps them")
    return rows


def drop_finished_checkpoints(grid, rows: list[dict[str, Any]], keep: str | None) -> tuple[int, int]:
    """Delete the checkpoint folders of finished trials but `keep` (the best); returns (trials, bytes).
    Only for a search that has ended (never after an interruption).

    Errored and interrupted trials keep theirs: `tuner resume` continues them from there. Finished trials are never
    trained again, best/ already holds the best model, and on a cluster every kept checkpoint is
    storage paid for.
    """
    finished = {row["trial_id"] for row in rows
                if row["status"] in ("completed", "stopped_early", "diverged") and row["trial_id"] != keep}
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
    interrupted = f", {counts['interrupted']} interrupted" if counts["interrupted"] else ""
    print(f"\n{len(rows)} trials: {counts['completed']} completed, {counts['stopped_early']} stopped early by "
          f"ASHA, {diverged}{counts['errored']} errored{interrupted}; {sum(r['steps'] for r in rows)} trial-steps, "
          f"{sum(r['epochs_run'] for r in rows)} trial-epochs")
    name = _namer(rows)
    for row in rows:
        if row["error"]:
            print(f"  {name(row['trial_id'])} {row['status']}: {row['error']}")
        if row["warning"]:
            print(f"  {name(row['trial_id'])} {row['warning']}")
    print(f"top trials by {metric}:")
    width = max((len(name(row["trial_id"])) for row in done[:top]), default=0)
    for row in done[:top]:
        params = ", ".join(f"{k}={_short(row[k])}" for k in searched if row[k] is not None)
        print(f"  {name(row['trial_id']):<{width}}  {metric} {row[metric]:.4f}  steps {row['steps']:>5}  {params}")
    if payload is None:
        print("no trial reported a result; nothing exported")
        return
    print(f"delivered: {name(payload['metrics']['trial_id'])} epoch {payload['epoch']}, {metric} "
          f"{payload['metrics'][metric]:.4f}" + (f", test_acc {payload['metrics']['test_acc']:.4f}"
                                                  if "test_acc" in payload["metrics"] else ""))
    print(f"  why: {payload['metrics']['selection']}")
    print(f"weights: {payload['weights']['name']}")
    best = f"{location.rstrip('/')}/best"
    local = "://" not in location  # predict and evaluate read a local best/ only
    print(f"best model: {best}" + (f"  (tuner predict --model {best} IMAGE)" if local else ""))
    if local and "test_acc" not in payload["metrics"]:  # val_acc chose it, and flatters it: say how to judge it
        print(f"  the data has no test/ split: judge it on images no search saw with "
              f"tuner evaluate --model {best} --data HELD_OUT")


def print_selection(selection: Selection | None, payload: dict[str, Any] | None, rows: list[dict[str, Any]]) -> None:
    """When trials are within noise of the best: which, with their intervals (print_summary says which was
    delivered and why). `rows` (trials.parquet's) give the trials' numbers."""
    if payload is None or selection is None or len(selection.within_noise()) < 2:
        return
    name = _namer(rows)
    print(f"within noise of the best, {name(selection.comparisons[0].trial_id)}, on the validation images: "
          f"accuracy, McNemar p and Holm's adjustment of it over the comparisons (Holm p >= {ALPHA} is within "
          f"noise: this test decides), and the paired bootstrap's "
          f"95% interval of the accuracy difference (the noise's width):")
    width = max(len(name(c.trial_id)) for c in selection.within_noise())
    for c in selection.within_noise():
        print(f"  {name(c.trial_id):<{width}}  {c.accuracy:.4f}  p {c.mcnemar_p:.3f}  Holm p {c.holm_p:.3f}  "
              f"[{c.diff_low:+.4f}, {c.diff_high:+.4f}]")


def _namer(rows: list[dict[str, Any]]) -> Callable[[str], str]:
    """trial id -> `trial N (id)` (outcomes.trial_name), numbered as in `rows`."""
    numbers = {row["trial_id"]: row[outcomes.NUMBER] for row in rows}
    return lambda trial_id: outcomes.trial_name(numbers.get(trial_id), trial_id)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
