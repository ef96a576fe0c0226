"""`tuner report RUN`: an offline HTML page with figures about a search, finished or still running.

The page is RUN/report/index.html with PNG figures beside it (a run at a URI gets ./report-NAME/
instead: the report is written locally). What it shows is read by run.py (the tables), importance.py
(RUN/optuna.db) and analysis.py (RUN/best/ and the run's data); figures.py draws. No Ray is imported:
a report can be made on any machine that can read the run.
"""

from __future__ import annotations

import html
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import first_line
from ..runs.outcomes import has_result, hyperparameter_columns, trial_name
from ..runs.run_files import TRIAL_LOGS
from ..runs.selection import ALPHA
from ..runs.storage import is_uri
from . import figures
from .analysis import NotAvailable, best_model_analysis
from .importance import param_importances
from .run import RunData, counts, delivered, open_run, problems, ranked, weights_text, within_noise
from .study_check import agreement_line


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
    interrupted = f"{c['interrupted']} interrupted, " if c["interrupted"] else ""
    lines = [
        f"{run.name}: {len(run.trials)} trials: {c['completed']} completed, {c['stopped_early']} stopped early "
        f"by ASHA, {diverged}{c['errored']} errored, {interrupted}{c['running']} running; {len(run.epochs)} reports"
        + ("" if run.finished else " (search not finished: read from the trials' result.json files)"),
        (f"best: {trial_name(best[0]['number'], best[0]['trial_id'])} {run.metric} {best[0][run.metric]:.4f} "
         f"at epoch {best[0]['best_epoch']}" if best else "best: no trial has reported a result yet"),
        f"weights: {weights_text(run)}",
    ]
    chosen = delivered(run)
    if chosen:
        lines.insert(2, f"delivered: {_name(run, chosen[0])}: {chosen[1]}")
    if c["interrupted"]:
        lines.append(f"interrupted: `tuner resume {run.location}` continues {c['interrupted']} unfinished trials "
                     f"from their checkpoints")
    agreement = agreement_line(run)
    if agreement:
        lines.append(agreement)
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
                  if e.get("reported_at") and has_result(e.get(metric)) and math.isfinite(start)]
        page.figure("best_so_far.png", lambda p: figures.best_so_far(run.trials, points, metric, run.mode, p),
                    "Best result so far, by trial number (the order the search created them) and by wall-clock time.")
        page.figure("learning_curves.png",
                    lambda p: figures.learning_curves(_curves(run), metric, run.rungs, p),
                    "Every trial's validation curve by budget step. Dotted lines: the steps where ASHA compares "
                    "trials and stops the weaker ones. A cross ends the curve of a trial whose training loss became "
                    "NaN or infinite (diverged); that epoch has no validation result.")
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
        log_scaled = run.log_scaled  # the axes the space searched on a log scale
        page.figure("hyperparameters.png",
                    lambda p: figures.metric_by_hyperparameter(best, names, metric, p, log_scaled=log_scaled),
                    f"Each trial's best {metric} against each searched hyperparameter; colour: outcome "
                    "(blue completed, orange stopped early, purple diverged, red errored, green running).")
        page.figure("parallel.png",
                    lambda p: figures.parallel_coordinates(best[:top], names, metric, p, log_scaled=log_scaled),
                    f"The top {min(top, len(best))} trials: one line each across the searched hyperparameters, "
                    "each axis spanning their range (log where the space searched on a log scale); a gap is a "
                    "hyperparameter the trial did not have.")

    page.h2(f"Top {min(top, len(best))} trials by {metric}")
    page.trial_table(best[:top], run)
    _selection(page, run)
    trouble = problems(run)
    if trouble:
        page.h2("Problems")
        page.p("Trials that diverged (a NaN or infinite training loss), failed, or resumed from an older "
               "checkpoint than their latest (a damaged one was skipped):")
        page.ul(trouble, html_id="problems")
        logs = _error_logs(run)
        if logs:
            page.p("The files of the trials that errored: Ray's error.txt and the trial's own output.")
            page.links(logs, html_id="error-logs")

    page.h2("The best model")
    page.p(f"Weights: {weights_text(run)}.")
    try:
        analysis = best_model_analysis(run)
    except NotAvailable as why:
        page.p(f"No best-model figures: {why}.")
    else:
        page.p(f"The model of {_name(run, analysis.trial_id)}, epoch {analysis.epoch}: accuracy "
               f"{analysis.accuracy:.4f} on the "
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


def _selection(page: _Page, run: RunData) -> None:
    """Which trial best/ holds and why; with the trials within noise of the best, their paired comparisons."""
    chosen = delivered(run)
    if chosen is None:
        return
    page.h2("Which trial was delivered")
    page.p(f"best/ holds {_name(run, chosen[0])}: {chosen[1]}.")
    close = within_noise(run)
    if close:
        page.p(f"Trials the search cannot tell from the best on the validation images (exact McNemar p, adjusted "
               f"by Holm's method over the comparisons, >= {ALPHA}), "
               "with the 95% paired-bootstrap interval of their accuracy minus the best's:")
        page.ul([f"{trial_name(t['number'], t['trial_id'])}: {run.metric} {t[run.metric]:.4f}, McNemar p "
                 f"{t['mcnemar_p']:.3f}" + (f" (Holm {t['holm_p']:.3f})" if t.get("holm_p") is not None else "")
                 + f", interval [{t['diff_low']:+.4f}, {t['diff_high']:+.4f}]"
                 + (" (delivered)" if t.get("delivered") else "") for t in close], html_id="within-noise")


def _name(run: RunData, trial_id: str) -> str:
    """`trial N (id)` for a trial of the run (outcomes.trial_name)."""
    return trial_name(next((t["number"] for t in run.trials if t["trial_id"] == trial_id), None), trial_id)


def _curves(run: RunData) -> dict[str, tuple[str, list[int], list[float]]]:
    status = {t["trial_id"]: t["status"] for t in run.trials}
    curves: dict[str, tuple[str, list[int], list[float]]] = {}
    for row in sorted(run.epochs, key=lambda r: (r["trial_id"], r["budget_steps"])):
        if not has_result(row.get(run.metric)) or row["trial_id"] not in status:  # a diverged epoch's NaN
            continue
        _, xs, ys = curves.setdefault(row["trial_id"], (status[row["trial_id"]], [], []))
        xs.append(row["budget_steps"])
        ys.append(row[run.metric])
    return curves


def _error_logs(run: RunData) -> list[tuple[str, list[tuple[str, str]]]]:
    """(trial, [(file, link)]) for each errored trial's error.txt and stdout/stderr logs that exist; the
    links are relative (RUN/report/ -> RUN/trial_<id>/), or the files' URIs for a run at a URI."""
    found = []
    for trial in run.trials:
        if trial["status"] != "errored":
            continue
        folder = f"trial_{trial['trial_id']}"
        names = ("error.txt", *TRIAL_LOGS)
        if is_uri(run.location):
            files = [(n, f"{run.location.rstrip('/')}/{folder}/{n}") for n in names]
        else:
            files = [(n, f"../{folder}/{n}") for n in names if (run.folder / folder / n).is_file()]
        if files:
            found.append((trial_name(trial["number"], trial["trial_id"]), files))
    return found


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

    def links(self, items: list[tuple[str, list[tuple[str, str]]]], html_id: str) -> None:
        """A list of `label: file, file` lines, each file a link."""
        rows = ("<li>" + html.escape(label) + ": " + ", ".join(
            f'<a href="{html.escape(href)}">{html.escape(name)}</a>' for name, href in files) + "</li>"
            for label, files in items)
        self.parts.append(f'<ul id="{html.escape(html_id)}">' + "".join(rows) + "</ul>")

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
        other = sorted(k for k in hyperparameter_columns(trials[0]) if k != "metric" and k not in names)
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
