"""`tuner report RUN`: an offline HTML page with figures about a search, finished or still running.

The page is RUN/report/index.html with PNG figures beside it (a run at a URI gets ./report-NAME/
instead: the report is written locally). It reads RUN/trials.parquet and RUN/epochs.parquet when the
search has finished, else Ray's RUN/trial_*/result.json files; RUN/optuna.db for hyperparameter
importance when it is there; RUN/best/ and the run's data for the best model's confusion matrix.
No Ray is imported: a report can be made on any machine that can read the run.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import figures
from ..train.budget import SearchBudget, ran_whole_budget
from ..train.config import METRICS, field_names, is_better
from ..errors import UserError, first_line
from ..search.run_files import RAY_COLUMNS, RUN_RECORD, STUDY_FILE, damaged_record, not_a_run, parse_run_record
from ..search.run_files import STATUSES as FINISHED_STATUSES
from ..search.storage import filesystem, is_uri

STATUSES = (*FINISHED_STATUSES, "running")  # a search still going has trials without an outcome yet


# --- reading a run -------------------------------------------------------------------------------


@dataclass
class RunData:
    """What a report needs from a run folder, read once; `fetch` gets any other file on demand."""

    location: str  # as given (absolute when local)
    folder: Path  # a local folder with the run's files: the run itself, or a temp copy of a URI's
    record: dict[str, Any]  # tuner.json
    trials: list[dict[str, Any]]  # one row per trial in start order, as in trials.parquet
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
        trials = pq.read_table(folder / "trials.parquet").to_pylist()
        epochs = pq.read_table(folder / "epochs.parquet").to_pylist()
    else:
        trials, epochs = _tables_from_results(folder, record)
    return RunData(location, folder, record, _in_start_order(trials, epochs), epochs, finished, fs, base)


def _tables_from_results(folder: Path, record: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """trials/epochs rows from Ray's per-trial result.json files, while the search still runs."""
    metric, budget = record["settings"].get("metric", "val_acc"), SearchBudget(**record["budget"])
    hyperparameters = set(field_names()) - {"epochs", "steps"}  # the schedule's length, not what ran
    trials, epochs = [], []
    for trial_dir in sorted(p for p in folder.glob("trial_*") if p.is_dir()):
        lines = _json_lines(trial_dir / "result.json")
        params_file = trial_dir / "params.json"
        config = lines[-1].get("config") if lines else (
            json.loads(params_file.read_text()) if params_file.is_file() else {})
        history = [{k: v for k, v in line.items() if k not in RAY_COLUMNS} for line in lines]
        epochs += history
        best = None
        for row in history:
            if is_better(METRICS[metric], row.get(metric), best and best[metric]):
                best = row
        status = _running_status(lines, trial_dir, budget)
        warnings_seen = [str(line["warning"]) for line in lines if line.get("warning")]
        trials.append({
            "trial_id": lines[-1]["trial_id"] if lines else trial_dir.name.removeprefix("trial_"),
            "status": status,
            "epochs": int(lines[-1].get("epoch", 0)) if lines else 0,
            "steps": int(lines[-1].get("step", 0)) if lines else 0,
            "budget_steps": int(lines[-1].get("budget_steps", 0)) if lines else 0,
            "stopped_early": status == "stopped_early",
            "best_epoch": best and best.get("epoch"),
            "best_step": best and best.get("step"),
            "val_acc": best and best.get("val_acc"),
            "val_loss": best and best.get("val_loss"),
            "seconds": lines[-1].get("time_total_s", 0.0) if lines else 0.0,
            "node": lines[-1].get("node") if lines else None,
            "error": _running_error(lines, trial_dir, status),
            "warning": "; ".join(warnings_seen) or None,
            **{k: v for k, v in (config or {}).items() if k in hyperparameters},
        })
    return trials, epochs


def _running_status(lines: list[dict], trial_dir: Path, budget: SearchBudget) -> str:
    if lines and lines[-1].get("diverged") is True:  # a NaN or infinite loss ended it (trainable.train_trial)
        return "diverged"
    if lines and ran_whole_budget(lines[-1].get("budget_steps"), budget):
        return "completed"
    if (trial_dir / "error.txt").is_file():
        return "errored"
    if lines and lines[-1].get("done"):  # Ray marks the last result of a trial the scheduler stopped
        return "stopped_early"
    return "running"


def _running_error(lines: list[dict], trial_dir: Path, status: str) -> str | None:
    """Why a trial diverged or errored, as results.trial_error words it; None for the others."""
    if status == "diverged":
        last = lines[-1]
        return (f"training diverged in epoch {last.get('epoch')}: loss is {last.get('train_loss')}; "
                f"lower the learning rates")
    if status == "errored":
        return _last_error_line((trial_dir / "error.txt").read_text(errors="replace")) or None
    return None


def _last_error_line(text: str) -> str:
    """The exception line that ends Ray's trace in error.txt (its `Failure # N` headers skipped)."""
    lines = [line.strip() for line in text.splitlines()]
    return next((line for line in reversed(lines) if line and not line.startswith("Failure # ")), "")


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


def _in_start_order(trials: list[dict], epochs: list[dict]) -> list[dict]:
    by_trial: dict[str, list[dict]] = {}
    for row in epochs:
        by_trial.setdefault(row["trial_id"], []).append(row)
    for trial in trials:
        trial["started_at"] = _trial_start(by_trial.get(trial["trial_id"], []))
    trials = sorted(trials, key=lambda t: (t["started_at"], t["trial_id"]))
    for number, trial in enumerate(trials, 1):
        trial["number"] = number  # 1, 2, 3 in start order, as the search's progress lines count them
    return trials


# --- analysis ------------------------------------------------------------------------------------


def ranked(run: RunData) -> list[dict]:
    """Trials with a result, best first by the search's metric."""
    done = [t for t in run.trials if _finite(t.get(run.metric))]
    return sorted(done, key=lambda t: t[run.metric], reverse=run.mode == "max")


def counts(run: RunData) -> dict[str, int]:
    return {status: sum(t["status"] == status for t in run.trials) for status in STATUSES}


def problems(run: RunData) -> list[str]:
    """One line per trial that diverged, errored or resumed from an older checkpoint, in start order."""
    lines = []
    for trial in run.trials:
        name = f"trial {trial['number']} ({trial['trial_id']})"
        if trial["status"] in ("diverged", "errored"):
            lines.append(f"{name} {trial['status']}: {trial.get('error') or 'no error message recorded'}")
        if trial.get("warning"):
            lines.append(f"{name} warning: {trial['warning']}")
    return lines


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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


@dataclass
class Importance:
    values: dict[str, float] | None  # name -> importance, most important first; None: not computed
    source: str  # what the numbers come from
    note: str = ""  # why there are none, or the evaluator's caveats


def param_importances(run: RunData) -> Importance:
    """Optuna's importances (PED-ANOVA, Optuna's default) from RUN/optuna.db, else from the trials table."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tuner-optuna-") as tmp:
        return _importances(run, *_stored_study(run, Path(tmp) / STUDY_FILE))


def _importances(run: RunData, study, source: str) -> Importance:
    import optuna

    if study is None:
        study = _study_from_table(run)
        source = (f"an in-memory Optuna study of the trials table ({run.metric}: each trial's best epoch)"
                  + (f"; {source}" if source else ""))
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = _varied_params(completed)
    if len(completed) < 2:
        return Importance(None, source, f"only {len(completed)} trial(s) with a result; importance needs 2 or more")
    if len(varied) < 2:
        what = f"only {varied[0]} varies" if varied else "no hyperparameter varies"
        return Importance(None, source, f"{what} across the trials, so there is nothing to compare")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = optuna.importance.get_param_importances(study, params=varied)
    caveats = list(dict.fromkeys(str(w.message) for w in caught))
    if any("same set of trials" in c for c in caveats):  # every parameter would get the same share
        return Importance(None, source, f"too few trials ({len(completed)}) to tell the hyperparameters apart")
    return Importance(dict(values), source, " ".join(caveats))


def _stored_study(run: RunData, snapshot: Path):
    """The search's own study, read from a `snapshot` of RUN/optuna.db (the run's file is never opened
    for writing); (None, why) when it is missing or not yet useful."""
    import optuna

    db = run.fetch(STUDY_FILE)
    if db is None:
        return None, "RUN/optuna.db is not there"
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as reader, \
                closing(sqlite3.connect(snapshot)) as copy:
            reader.backup(copy)  # a consistent copy even while the search writes to the file
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{snapshot}")
    except Exception as err:  # several studies, an old schema, a corrupt file: use the table instead
        return None, f"RUN/optuna.db could not be read ({first_line(err)[:120]})"
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2 or not _varied_params(completed):
        return None, f"RUN/optuna.db has {len(completed)} completed trial(s), too few or none that differ"
    return study, f"the search's Optuna study (RUN/optuna.db, {len(completed)} completed trials)"


def _varied_params(trials) -> list[str]:
    values: dict[str, set] = {}
    for trial in trials:
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(value)
    return [name for name, seen in values.items() if len(seen) > 1]


def _study_from_table(run: RunData):
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    rows = [t for t in ranked(run) if t["status"] != "errored"]
    distributions = {}
    for name in run.searched:
        values = [r[name] for r in rows if r.get(name) is not None]
        if not values:
            continue
        if all(isinstance(v, (bool, str)) for v in values):
            distributions[name] = CategoricalDistribution(sorted(set(values), key=str))
        elif all(isinstance(v, int) for v in values):
            distributions[name] = IntDistribution(min(values), max(values))
        else:
            distributions[name] = FloatDistribution(min(values), max(values),
                                                    log=figures.is_log_scale(name) and min(values) > 0)
    study = optuna.create_study(direction="maximize" if run.mode == "max" else "minimize")
    for row in rows:
        params = {n: row[n] for n in distributions if row.get(n) is not None}
        study.add_trial(optuna.trial.create_trial(params=params, value=row[run.metric],
                                                  distributions={n: distributions[n] for n in params}))
    return study


class NotAvailable(Exception):
    """The best-model figures cannot be made; the message says why (shown on the page)."""


@dataclass
class BestModelAnalysis:
    trial_id: str | None
    epoch: int | None
    classes: list[str]
    matrix: list[list[int]]  # matrix[true][predicted]: counts of validation images
    per_class: list[float | None]  # accuracy of each true class (None: no image of it)
    accuracy: float
    recorded: float | None  # the val_acc the search recorded for this epoch
    mistakes: list[dict[str, Any]]  # most confident first: path, true, predicted, probability


def best_model_analysis(run: RunData, *, mistakes: int = 12, device: str = "cpu") -> BestModelAnalysis:
    """Evaluate RUN/best/model.pt on the run's validation images; NotAvailable says why it cannot."""
    import torch
    from torch.utils.data import DataLoader

    from ..train import data
    from ..train.precision import DTYPES
    from ..serve.predict import Predictor
    from ..search.storage import local_data

    model_file = run.fetch("best/model.pt")
    if model_file is None:
        raise NotAvailable("there is no best/model.pt yet: the search writes it when it ends")
    try:
        predictor = Predictor(model_file, device=device)
    except UserError as err:
        raise NotAvailable(str(err)) from None
    config_file = run.fetch("best/config.json")
    config = json.loads(config_file.read_text()) if config_file else {}
    location = run.record["settings"].get("data")
    try:  # the same validation split the search used (a URI is fetched into this node's cache)
        splits = data.load_splits(local_data(location), val_fraction=config.get("val_fraction", 0.2),
                                  seed=config.get("seed", 0),
                                  skip_bad_images=run.record["settings"].get("skip_bad_images", False))
    except (UserError, OSError) as err:
        raise NotAvailable(f"the run's data {location!r} cannot be read ({first_line(err)}); "
                           f"restore it there to see the best model's errors") from None
    if splits.classes != predictor.classes:
        raise NotAvailable(f"the data at {location!r} now has classes {splits.classes}, the model "
                           f"{predictor.classes}; the data changed since the search")
    # The precision the search evaluated in (as its trial chose it), so the accuracy here is its val_acc.
    metrics_file = run.fetch("best/metrics.json")
    compute = json.loads(metrics_file.read_text()).get("compute", "fp32/") if metrics_file else "fp32/"
    precision = compute.split("/")[0]
    dtype = DTYPES["fp32" if precision == "fp16" and predictor.device.type != "cuda" else precision]
    probabilities = []
    loader = DataLoader(data.ImageListDataset(splits.val, predictor.transform), batch_size=64)
    with torch.no_grad(), torch.autocast(predictor.device.type, dtype=dtype, enabled=dtype is not None):
        for images, _ in loader:
            probabilities.append(predictor.model(images.to(predictor.device)).float().softmax(1).cpu())
    probs = torch.cat(probabilities)
    confidence, predicted = probs.max(1)
    labels = [label for _, label in splits.val]
    n = len(splits.classes)
    matrix = [[0] * n for _ in range(n)]
    for true, guess in zip(labels, predicted.tolist()):
        matrix[true][guess] += 1
    wrong = sorted((i for i, (t, p) in enumerate(zip(labels, predicted.tolist())) if t != p),
                   key=lambda i: -float(confidence[i]))
    metrics_file = run.fetch("best/metrics.json")
    metrics = json.loads(metrics_file.read_text()) if metrics_file else {}
    return BestModelAnalysis(
        trial_id=metrics.get("trial_id"), epoch=metrics.get("epoch"), classes=list(splits.classes),
        matrix=matrix,
        per_class=[row[i] / sum(row) if sum(row) else None for i, row in enumerate(matrix)],
        accuracy=sum(matrix[i][i] for i in range(n)) / max(len(labels), 1),
        recorded=metrics.get("val_acc"),
        mistakes=[{"path": splits.val[i][0], "true": splits.classes[labels[i]],
                   "predicted": splits.classes[int(predicted[i])], "probability": float(confidence[i])}
                  for i in wrong[:mistakes]],
    )


# --- the report ----------------------------------------------------------------------------------


def report_folder(run: str) -> Path:
    """Where the report of `run` goes: RUN/report, or ./report-NAME for a run at a URI."""
    if is_uri(run):
        return Path.cwd() / f"report-{run.rstrip('/').rsplit('/', 1)[-1]}"
    return Path(run).expanduser().resolve() / "report"


def write_report(run: str, *, top: int = 10) -> Path:
    """Write the report of `run` (a run folder or URI); returns its index.html.

    Built in a temporary folder beside the report and swapped in whole, so a reader never sees half
    a report; no other file of the run is touched.
    """
    target = report_folder(run)
    with open_run(run) as data:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.tmp-"))
        staging.chmod(0o755)  # mkdtemp makes it private; a report is for reading
        try:
            (staging / "index.html").write_text(_build(data, staging, top))
            _swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target / "index.html"


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def summary_lines(run: str | RunData, html_path: Path | None = None) -> list[str]:
    """The report's text summary for the terminal: trials by status, trial-epochs, best, weights, page."""
    if not isinstance(run, RunData):
        with open_run(run) as data:
            return summary_lines(data, html_path)
    c, best = counts(run), ranked(run)
    diverged = f"{c['diverged']} diverged, " if c["diverged"] else ""
    lines = [
        f"{run.name}: {len(run.trials)} trials: {c['completed']} completed, {c['stopped_early']} stopped early "
        f"by ASHA, {diverged}{c['errored']} errored, {c['running']} running; {len(run.epochs)} reports"
        + ("" if run.finished else " (search not finished: read from the trials' result.json files)"),
        (f"best: trial {best[0]['number']} ({best[0]['trial_id']}) {run.metric} {best[0][run.metric]:.4f} "
         f"at epoch {best[0]['best_epoch']}" if best else "best: no trial has reported a result yet"),
        f"weights: {weights_text(run)}",
    ]
    if html_path is not None:
        lines.append(f"report: {html_path}")
    return lines


def _build(run: RunData, out: Path, top: int) -> str:
    """Draw every figure into `out` and return the page."""
    metric, best = run.metric, ranked(run)
    page = _Page(out)
    page.h1(f"Search report: {run.name}")
    page.p(f"Run: {run.location}. Made {time.strftime('%Y-%m-%d %H:%M:%S')}. " + (
        "Read from trials.parquet and epochs.parquet (the search has finished)." if run.finished else
        "The search has not finished: read from Ray's trial_*/result.json files; a trial is 'running' until "
        "it has spent its budget or Ray marks it stopped."))
    page.ul(summary_lines(run) + [f"metric: {metric} ({run.mode}imised by the search)"])

    page.h2("Progress of the search")
    if best:
        start = min(t["started_at"] for t in run.trials)  # inf when no epoch has a wall-clock time
        points = [((e["reported_at"] - start) / 60, e[metric]) for e in run.epochs  # a diverged epoch's NaN: left out
                  if e.get("reported_at") and _finite(e.get(metric)) and math.isfinite(start)]
        page.figure("best_so_far.png", lambda p: figures.best_so_far(run.trials, points, metric, run.mode, p),
                    "Best result so far, by trial (in the order trials started) and by wall-clock time.")
        page.figure("learning_curves.png",
                    lambda p: figures.learning_curves(_curves(run), metric, _rungs(run.record), p),
                    "Every trial's validation curve by budget step. Dotted lines: the steps where ASHA compares trials and "
                    "stops the weaker ones. A cross ends the curve of a trial whose training loss became NaN or "
                    "infinite (diverged); that epoch has no validation result.")
    else:
        page.p("No trial has reported a result yet.")

    page.h2("Which hyperparameters mattered")
    importance = param_importances(run)
    if importance.values:
        page.figure("importance.png", lambda p: figures.importance_bars(importance.values, p),
                    f"Importance computed by Optuna (PED-ANOVA) from {importance.source}. {importance.note}")
    else:
        page.p(f"No importance figure: {importance.note}. (Source: {importance.source}.)")
    names = [n for n in run.searched if any(t.get(n) is not None for t in best)]
    if best and names:
        page.figure("hyperparameters.png", lambda p: figures.metric_by_hyperparameter(best, names, metric, p),
                    f"Each trial's best {metric} against each searched hyperparameter; colour: outcome "
                    "(blue completed, orange stopped early, purple diverged, red errored, green running).")
        page.figure("parallel.png", lambda p: figures.parallel_coordinates(best[:top], names, metric, p),
                    f"The top {min(top, len(best))} trials: one line each across the searched hyperparameters, "
                    "each axis spanning their range (log for rates); a gap is a hyperparameter the trial "
                    "did not have.")

    page.h2(f"Top {min(top, len(best))} trials by {metric}")
    page.trial_table(best[:top], run)
    trouble = problems(run)
    if trouble:
        page.h2("Problems")
        page.p("Trials that diverged (a NaN or infinite training loss), failed, or resumed from an older "
               "checkpoint than their latest (a damaged one was skipped):")
        page.ul(trouble, html_id="problems")

    page.h2("The best model")
    page.p(f"Weights: {weights_text(run)}.")
    try:
        analysis = best_model_analysis(run)
    except NotAvailable as why:
        page.p(f"No best-model figures: {why}.")
    else:
        page.p(f"Trial {analysis.trial_id}, epoch {analysis.epoch}: accuracy {analysis.accuracy:.4f} on the "
               f"{sum(map(sum, analysis.matrix))} validation images, evaluated again here in the search's "
               f"precision" + (f" (the search recorded val_acc {analysis.recorded:.4f})"
                               if analysis.recorded is not None else "") + ".")
        page.figure("confusion.png", lambda p: figures.confusion_matrix(analysis.matrix, analysis.classes, p),
                    "Rows: true class; columns: the model's prediction.")
        page.figure("per_class.png", lambda p: figures.per_class_accuracy(analysis.per_class, analysis.classes, p),
                    "Share of each class's validation images the model gets right.")
        if analysis.mistakes:
            page.figure("misclassified.png", lambda p: figures.misclassified_grid(analysis.mistakes, p),
                        "The validation images the model gets wrong with the highest confidence.")
        else:
            page.p("The best model classifies every validation image correctly.")
    return page.html()


def _curves(run: RunData) -> dict[str, tuple[str, list[int], list[float]]]:
    status = {t["trial_id"]: t["status"] for t in run.trials}
    curves: dict[str, tuple[str, list[int], list[float]]] = {}
    for row in sorted(run.epochs, key=lambda r: (r["trial_id"], r["budget_steps"])):
        if not _finite(row.get(run.metric)) or row["trial_id"] not in status:  # a diverged epoch's NaN
            continue
        _, xs, ys = curves.setdefault(row["trial_id"], (status[row["trial_id"]], [], []))
        xs.append(row["budget_steps"])
        ys.append(row[run.metric])
    return curves


def _rungs(record: dict[str, Any]) -> list[int]:
    """The budget steps at which ASHA decides (grace x reduction_factor^k below the budget)."""
    settings, budget = record["settings"], SearchBudget(**record["budget"])
    if not settings.get("early_stopping", True):
        return []
    rungs, spent = [], budget.grace_steps
    while spent < budget.steps:
        rungs.append(spent)
        spent *= settings["reduction_factor"]
    return rungs


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _Page:
    """An HTML page built from escaped text and figures drawn into its folder."""

    def __init__(self, folder: Path):
        self.folder, self.parts = folder, []

    def h1(self, text: str) -> None:
        self.parts.append(f"<h1>{html.escape(text)}</h1>")

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def ul(self, items: list[str], html_id: str | None = None) -> None:
        attribute = f' id="{html.escape(html_id)}"' if html_id else ""
        self.parts.append(f"<ul{attribute}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def figure(self, name: str, draw, caption: str) -> None:
        """Draw into `name`; a figure that fails is reported on the page rather than ending the report."""
        try:
            draw(self.folder / name)
        except Exception as err:  # a report of a half-broken run should still show the rest
            self.p(f"Figure {name} could not be drawn: {type(err).__name__}: {first_line(err)[:200]}")
            return
        src = html.escape(name)  # clicking a figure opens it at full size
        self.parts.append(f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(caption)}"></a>'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def trial_table(self, trials: list[dict], run: RunData) -> None:
        if not trials:
            self.p("No trial has a result yet.")
            return
        # Searched names first, then anything else that differs between trials; constants go below.
        names = [n for n in run.searched if any(t.get(n) is not None for t in run.trials)]
        hyper = set(field_names()) - {"epochs", "steps", "metric"}
        other = sorted(k for k in trials[0] if k in hyper and k not in names)
        varying = [k for k in other if len({repr(t.get(k)) for t in run.trials}) > 1]
        columns = ["number", "trial_id", "status", run.metric, "best_step", "steps", *names, *varying]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(t.get(c)))}</td>" for c in columns) + "</tr>"
                       for t in trials)
        self.parts.append(f'<table id="top-trials"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
        same = [f"{k}={_cell(trials[0].get(k))}" for k in other if k not in varying]
        if same:
            self.p("The same in every trial: " + ", ".join(same) + ".")

    def html(self) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "img{max-width:100%}table{border-collapse:collapse;font-size:13px}"
                 "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}figcaption{color:#555}")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tuner report</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(self.parts) + "\n</body></html>\n")
