"""Does RUN/optuna.db agree with RUN/trials.parquet? Every trial that ended has the same state and value in
both (outcomes.optuna_state says which state each status is told as); `tuner report` says so."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..runs.outcomes import has_result, optuna_state
from .importance import read_study
from .run import RunData


def study_disagreements(run: RunData) -> tuple[int, list[str]] | None:
    """(trials compared, one line per trial on which the two differ); None where there is nothing to compare
    (a search not finished, no readable optuna.db)."""
    if not run.finished:
        return None
    with tempfile.TemporaryDirectory(prefix="tuner-study-check-") as tmp:
        study, _ = read_study(run, Path(tmp) / "optuna.db")
        if study is None:
            return None
        told = {t.user_attrs["trial_id"]: (t.state.name, t.value) for t in study.get_trials(deepcopy=False)
                if "trial_id" in t.user_attrs}
    stopped_as_complete = bool(run.record["settings"].get("stopped_as_complete"))
    compared, lines = 0, []
    for row in run.trials:
        expected = optuna_state(row["status"], row.get(run.metric), stopped_as_complete)
        if expected is None:
            continue
        compared += 1
        state, value = told.get(row["trial_id"], ("missing", None))
        if state != expected:
            lines.append(f"trial {row['trial_id']}: {row['status']} in trials.parquet, {state} in optuna.db "
                         f"(expected {expected})")
        elif expected == "COMPLETE" and has_result(row.get(run.metric)) and value != row[run.metric]:
            lines.append(f"trial {row['trial_id']}: {run.metric} {row[run.metric]} in trials.parquet, "
                         f"{value} in optuna.db")
    return compared, lines


def agreement_line(run: RunData) -> str | None:
    """One line for the report: they agree (on how many trials), or where they do not."""
    checked = study_disagreements(run)
    if checked is None:
        return None
    compared, lines = checked
    if not lines:
        return f"optuna.db agrees with trials.parquet on all {compared} ended trials"
    return f"optuna.db disagrees with trials.parquet on {len(lines)} trials: " + "; ".join(lines[:3])
