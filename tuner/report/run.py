"""Reading a run for `tuner report`: its record and tables, finished or still running, and what they say.

A finished search has RUN/trials.parquet and RUN/epochs.parquet; while it runs the same rows are built
from Ray's RUN/trial_*/result.json files (runs/outcomes.py words both). A run at a URI is copied into
a temporary folder, the small files at once, the others when asked for. No Ray is imported.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..runs import outcomes
from ..runs.budget import SearchBudget
from ..runs.outcomes import (
    NUMBER,
    diverged_error,
    hyperparameter_columns,
    last_error_line,
    model_metrics,
    spent_whole_budget,
    trial_name,
    trial_row,
    trial_status,
    with_current_names,
)
from ..runs.run_files import (
    RUN_RECORD,
    damaged_record,
    not_a_run,
    parse_run_record,
    recorded_rungs,
    searched_distributions,
)
from ..runs.storage import filesystem, is_uri
from ..train.config import METRICS

# --- reading a run -------------------------------------------------------------------------------


@dataclass
class RunData:
    """What a report needs from a run folder, read once; `fetch` gets any other file on demand."""

    location: str  # as given (absolute when local)
    folder: Path  # a local folder with the run's files: the run itself, or a temp copy of a URI's
    record: dict[str, Any]  # tuner.json
    trials: list[dict[str, Any]]  # one row per trial, as in trials.parquet, in order of their `number`
    epochs: list[dict[str, Any]]  # one row per trial-epoch, as in epochs.parquet
    finished: bool  # tables written by the end of the search (else built from result.json files)
    _fs: pafs.FileSystem | None = field(default=None, repr=False)
    _base: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    @property
    def metric(self) -> str:
        return self.record["settings"].get("metric", "val_acc")

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    @property
    def searched(self) -> list[str]:
        return list(self.record.get("searched", []))

    @property
    def log_scaled(self) -> set[str]:
        """The searched hyperparameters the space drew on a log scale: their axes are log too."""
        return {name for name, item in searched_distributions(self.record).items() if item["log"]}

    @property
    def rungs(self) -> list[int]:
        """The budget steps at which ASHA compared trials."""
        return recorded_rungs(self.record)

    def fetch(self, relative: str) -> Path | None:
        """The local path of RUN/`relative` (copied from a URI the first time), or None if there is none."""
        local = self.folder / relative
        if self._fs is not None and not local.exists():
            _copy_file(self._fs, f"{self._base}/{relative}", local)
        return local if local.is_file() else None


def _copy_file(fs: pafs.FileSystem, path: str, local: Path) -> None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


@contextmanager
def open_run(run: str) -> Iterator[RunData]:
    """Read a run folder (a path or a URI); UserError when it is not a run."""
    if not is_uri(run):
        folder = Path(run).expanduser().resolve()
        _require_record(folder / RUN_RECORD, str(folder))
        yield _read_run(str(folder), folder)
        return
    fs, base = filesystem(run)
    with tempfile.TemporaryDirectory(prefix="tuner-report-") as tmp:
        folder = Path(tmp)
        # Only the small files now; best/model.pt and optuna.db come through `fetch` when needed.
        for name in (RUN_RECORD, "trials.parquet", "epochs.parquet", "best/metrics.json"):
            _copy_file(fs, f"{base}/{name}", folder / name)
        _require_record(folder / RUN_RECORD, run)
        if not (folder / "trials.parquet").is_file():
            for info in fs.get_file_info(pafs.FileSelector(base)):
                if info.type == pafs.FileType.Directory and info.base_name.startswith("trial_"):
                    for name in ("result.json", "params.json", "error.txt"):
                        _copy_file(fs, f"{info.path}/{name}", folder / info.base_name / name)
        yield _read_run(run, folder, fs, base)


def _require_record(path: Path, run: str) -> None:
    if not path.is_file():
        raise not_a_run(run)


def _read_run(location: str, folder: Path, fs=None, base: str = "") -> RunData:
    try:
        text = (folder / RUN_RECORD).read_text()
    except UnicodeDecodeError as err:  # a binary file in its place
        raise damaged_record(location, err) from None
    record = parse_run_record(text, location)
    finished = (folder / "trials.parquet").is_file() and (folder / "epochs.parquet").is_file()
    if finished:
        trials = [with_current_names(row) for row in pq.read_table(folder / "trials.parquet").to_pylist()]
        epochs = pq.read_table(folder / "epochs.parquet").to_pylist()
    else:
        trials, epochs = _tables_from_results(folder, record)
    return RunData(location, folder, record, _numbered(trials, epochs), epochs, finished, fs, base)


def _tables_from_results(folder: Path, record: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """trials/epochs rows from Ray's per-trial result.json files, while the search still runs.

    The same rows as the finished search writes (outcomes.trial_row), so far; a trial's status may also
    be `running`.
    """
    metric, budget = record["settings"].get("metric", "val_acc"), SearchBudget(**record["budget"])
    trials, epochs = [], []
    for trial_dir in sorted(p for p in folder.glob("trial_*") if p.is_dir()):
        lines = _json_lines(trial_dir / "result.json")
        last = lines[-1] if lines else {}
        params_file = trial_dir / "params.json"
        config = (last.get("config") if lines else
                  json.loads(params_file.read_text()) if params_file.is_file() else None) or {}
        history = [model_metrics(line) for line in lines]  # the rows epochs.parquet will have
        epochs += history
        status = _running_status(last, trial_dir, budget)
        trial_id = last.get("trial_id") or trial_dir.name.removeprefix("trial_")
        trials.append({
            **trial_row(trial_id, last, history, number=config.get(NUMBER), status=status,
                        error=_running_error(last, trial_dir, status), metric=metric, mode=METRICS[metric]),
            **{name: config[name] for name in hyperparameter_columns(config)},
        })
    return trials, epochs


def _running_status(last: dict, trial_dir: Path, budget: SearchBudget) -> str:
    # error.txt stays after a failure Ray recovered from by a retry: a trial that went on to spend its
    # whole budget recovered. Ray marks `done` the last result of a trial the scheduler stopped.
    failed = (trial_dir / "error.txt").is_file() and not spent_whole_budget(last, budget.steps)
    return trial_status(last, budget.steps, failed=failed, ended=bool(last.get("done")))


def _running_error(last: dict, trial_dir: Path, status: str) -> str | None:
    """Why a trial diverged or errored, as results.trial_error words it; None for the others."""
    if status == "diverged":
        return diverged_error(last)
    if status == "errored":
        return last_error_line((trial_dir / "error.txt").read_text(errors="replace")) or None
    return None


def _json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line Ray is writing right now
            break
    return rows


def _trial_start(rows: list[dict]) -> float:
    """Unix time a trial started: its first report minus the seconds it had run by then."""
    starts = [r["reported_at"] - (r.get("time_total_s") or 0.0) for r in rows if r.get("reported_at")]
    return min(starts, default=math.inf)


def _numbered(trials: list[dict], epochs: list[dict]) -> list[dict]:
    """The trials in order of their NUMBER (the search's, as its progress lines and summary name them).

    A run made before trials were numbered is numbered 1, 2, 3 in start order, as its progress lines were;
    so is one resumed since, whose older trials have no number.
    """
    by_trial: dict[str, list[dict]] = {}
    for row in epochs:
        by_trial.setdefault(row["trial_id"], []).append(row)
    for trial in trials:
        trial["started_at"] = _trial_start(by_trial.get(trial["trial_id"], []))
    if all(trial.get(NUMBER) is not None for trial in trials):
        return sorted(trials, key=lambda t: t[NUMBER])
    trials = sorted(trials, key=lambda t: (t["started_at"], t["trial_id"]))
    for number, trial in enumerate(trials, 1):
        trial[NUMBER] = number
    return trials


# --- what the tables say -------------------------------------------------------------------------


def ranked(run: RunData) -> list[dict]:
    """Trials with a result, best first by the search's metric."""
    return outcomes.ranked(run.trials, run.metric, run.mode)


def counts(run: RunData) -> dict[str, int]:
    """Trials by status (outcomes.STATUSES)."""
    return outcomes.status_counts(run.trials)


def problems(run: RunData) -> list[str]:
    """One line per trial that diverged, errored or resumed from an older checkpoint, in order of number."""
    lines = []
    for trial in run.trials:
        name = trial_name(trial[NUMBER], trial["trial_id"])
        if trial["status"] in ("diverged", "errored"):
            lines.append(f"{name} {trial['status']}: {trial.get('error') or 'no error message recorded'}")
        if trial.get("warning"):
            lines.append(f"{name} warning: {trial['warning']}")
    return lines


def delivered(run: RunData) -> tuple[str, str] | None:
    """The trial RUN/best/ holds and why the search chose it (best/metrics.json's `selection`); None for a
    search still running or one made before the choice was recorded."""
    metrics_file = run.fetch("best/metrics.json")
    metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
    return (metrics["trial_id"], metrics["selection"]) if "selection" in metrics else None


def within_noise(run: RunData) -> list[dict]:
    """The trials the search could not tell from the best on the validation images (trials.parquet's
    within_noise), best first; [] when only the best is, or the run has no such column."""
    close = [t for t in ranked(run) if t.get("within_noise")]
    return close if len(close) > 1 else []


def weights_text(run: RunData) -> str:
    """The weights the trials started from, in plain words."""
    metrics_file = run.fetch("best/metrics.json")
    weights = json.loads(metrics_file.read_text()).get("weights") if metrics_file else None
    name = weights["name"] if weights else str(run.record.get("fixed", {}).get("weights", "imagenet"))
    if name == "none":
        text = "random init (weights none): no pretrained features"
    elif name.startswith("imagenet"):
        text = f"ImageNet pretrained ({name})"
    else:
        text = f"from a file ({name}{', ' + weights['path'] if weights and weights.get('path') else ''})"
    choice = run.record.get("weights_choice")
    return f"{text}; {choice}" if choice else text
