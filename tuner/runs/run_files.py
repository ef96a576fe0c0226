"""The files of a search's run folder (RUN = STORAGE/NAME) that several modules read: no Ray here.

search/driver.py writes them, search/results.py fills the tables, report/ reads them on any machine;
what a table's row holds (columns, statuses) is outcomes.py's.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import UserError
from .budget import SearchBudget, asha_rungs
from .storage import join, read_file_text

RUN_RECORD = "tuner.json"  # what resume and report need: space file, settings, fixed values, distributions, rungs
STUDY_FILE = "optuna.db"  # the search's Optuna study (SQLite): optuna-dashboard and optuna.load_study read it
TRIAL_LOGS = ("stdout.log", "stderr.log")  # each trial's output, in RUN/trial_<id>/ (RunConfig.log_to_file)
_RECORD_KEYS = ("space", "settings", "fixed", "searched", "budget")


def not_a_run(run: str) -> UserError:
    return UserError(f"{run!r} is not a tuner run (no {RUN_RECORD}); pass a run folder STORAGE/NAME made by "
                     f"tuner search")


def damaged_record(run: str, err: Exception) -> UserError:
    return UserError(f"{run!r}: {RUN_RECORD} is not valid JSON ({err}); the run record is damaged, restore it "
                     f"or start a new search")


def parse_run_record(text: str | None, run: str) -> dict[str, Any]:
    """RUN/tuner.json's content, checked: a missing or damaged record is a one-line UserError."""
    if text is None:
        raise not_a_run(run)
    try:
        record = json.loads(text)
    except ValueError as err:
        raise damaged_record(run, err) from None
    missing = [key for key in _RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing or not isinstance(record["settings"], dict):
        raise UserError(f"{run!r}: {RUN_RECORD} lacks {', '.join(missing) or 'a settings object'}; the run "
                        f"record is damaged, restore it or start a new search")
    return record


def read_run_record(run: str) -> dict[str, Any]:
    """RUN/tuner.json read from a folder or a URI and checked (parse_run_record)."""
    try:
        text = read_file_text(join(run, RUN_RECORD))
    except UnicodeDecodeError as err:  # a binary file in its place
        raise damaged_record(run, err) from None
    return parse_run_record(text, run)


def searched_distributions(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each searched hyperparameter's distribution by name, as the space declared it: name, kind (float, int
    or categorical), low, high, log, step, choices (search/space.py distribution_record writes them).

    A run recorded before tuner.json held them gets log for learning rates and weight decay, the rule
    reports guessed by then, and nothing else (kind, bounds and choices None).
    """
    if "distributions" in record:
        return {item["name"]: item for item in record["distributions"]}
    return {name: {"name": name, "kind": None, "low": None, "high": None, "step": None, "choices": None,
                   "log": name.startswith("lr_") or name == "weight_decay"} for name in record["searched"]}


def recorded_rungs(record: dict[str, Any]) -> list[int]:
    """The budget steps at which ASHA compared the run's trials (none without early stopping).

    A run recorded before tuner.json held them gets them from its budget and settings, as its search
    computed them (budget.asha_rungs).
    """
    if "rungs" in record:
        return list(record["rungs"])
    settings = record["settings"]
    if not settings.get("early_stopping", True):  # runs before the setting always stopped early
        return []
    return asha_rungs(SearchBudget(**record["budget"]), settings["reduction_factor"])
