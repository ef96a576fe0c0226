"""`tuner report`: the HTML page and figures of a real search (local Ray, Optuna, ASHA; tiny data)."""

import html
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tuner.errors import UserError
from tuner.report.analysis import best_model_analysis
from tuner.report.importance import param_importances
from tuner.report.page import summary_lines, write_report
from tuner.report.run import open_run, problems, ranked
from tuner.train import folders

FIGURES = ("best_so_far.png", "learning_curves.png", "importance.png", "hyperparameters.png", "parallel.png",
           "confusion.png", "per_class.png", "misclassified.png")


@pytest.fixture(scope="module")
def finished(finished_search):
    """The session's finished 6-trial search (conftest.py)."""
    return finished_search[0]


@pytest.fixture(scope="module")
def report(finished):
    return write_report(str(finished))


class _Page(HTMLParser):
    """The links, images and top-trials table of a report page."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.rows, self._in_table, self._cell = [], [], False, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.links.append(attrs["src"])
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "table" and attrs.get("id") == "top-trials":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, text):
        if self._cell is not None:
            self._cell += text

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None

    def table(self) -> list[dict[str, str]]:
        header, *body = self.rows
        return [dict(zip(header, row, strict=True)) for row in body]


def _page(html_path: Path) -> _Page:
    return _Page(html_path.read_text())


def _copy_run(run: Path, target: Path) -> Path:
    """The run's files without checkpoints, event files or report: what a report reads."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoint_*", "events.out.*", "report*"))
    return target


def _files_outside_report(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime for p in run.rglob("*")
            if p.is_file() and p.relative_to(run).parts[0] != "report"}


@pytest.mark.slow
def test_every_figure_is_a_readable_png(report):
    for name in FIGURES:
        path = report.parent / name
        assert path.is_file() and path.stat().st_size > 0, name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200, (name, image.size)


@pytest.mark.slow
def test_the_page_links_only_files_that_exist_beside_it(report):
    links = _page(report).links
    assert set(FIGURES) <= set(links)
    for link in links:
        assert "://" not in link and not link.startswith("/"), link  # opens offline, wherever it is copied
        assert (report.parent / link).is_file(), link
    assert "<script" not in report.read_text()


@pytest.mark.slow
def test_the_top_trials_table_matches_trials_parquet(finished, report):
    trials = {row["trial_id"]: row for row in pq.read_table(finished / "trials.parquet").to_pylist()}
    table = _page(report).table()
    assert len(table) == len(trials) == 6  # top 10 of 6 trials: all of them
    assert [float(r["val_acc"]) for r in table] == sorted((float(r["val_acc"]) for r in table), reverse=True)
    searched = json.loads((finished / "tuner.json").read_text())["searched"]
    for cells in table:
        row = trials[cells["trial_id"]]
        assert cells["status"] == row["status"] and int(cells["steps"]) == row["steps"]
        assert int(cells["best_step"]) == row["best_step"]
        for name in ["val_acc", *searched]:
            if row[name] is None:  # a frozen stage's learning rate
                assert cells[name] == ""
            else:
                assert float(cells[name]) == pytest.approx(row[name], rel=1e-3), name


@pytest.mark.slow
def test_the_page_states_the_weights_and_the_summary_counts_the_trials(finished, report):
    trials = pq.read_table(finished / "trials.parquet").to_pylist()
    epochs = pq.read_table(finished / "epochs.parquet").num_rows
    assert "random init (weights none)" in report.read_text()
    lines = summary_lines(str(finished), report)
    completed = sum(r["status"] == "completed" for r in trials)
    stopped = sum(r["status"] == "stopped_early" for r in trials)
    assert f"6 trials: {completed} completed, {stopped} stopped early by ASHA, 0 errored, 0 running" in lines[0]
    assert f"{epochs} reports" in lines[0]
    best = max(trials, key=lambda r: r["val_acc"])
    assert f"val_acc {best['val_acc']:.4f}" in lines[1]
    assert any("random init (weights none)" in line for line in lines)
    assert lines[-1] == f"report: {report}"


@pytest.mark.slow
def test_the_confusion_matrix_counts_every_validation_image_once(finished):
    splits = folders.load_splits(finished.parent.parent / "data")
    with open_run(str(finished)) as run:
        analysis = best_model_analysis(run)
    assert len(analysis.matrix) == len(analysis.classes) == 8
    assert sum(map(sum, analysis.matrix)) == len(splits.val) == 64
    assert [sum(row) for row in analysis.matrix] == [8] * 8  # each class's 8 images, in its own row
    # Evaluated again in the search's precision (bf16 on CPUs with bf16 units): the same accuracy.
    assert analysis.accuracy == pytest.approx(analysis.recorded)
    confidences = [m["probability"] for m in analysis.mistakes]
    assert confidences == sorted(confidences, reverse=True)
    assert all(m["true"] != m["predicted"] and Path(m["path"]).is_file() for m in analysis.mistakes)


@pytest.mark.slow
def test_writing_a_report_touches_no_other_file_of_the_run(finished, report):
    before = _files_outside_report(finished)
    write_report(str(finished))  # a second report replaces the first
    assert _files_outside_report(finished) == before
    assert not [p for p in finished.iterdir() if p.name.startswith("report.")]  # no staging folder left


@pytest.mark.slow
def test_a_running_search_is_reported_from_the_trials_result_files(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "running")
    trials = {row["trial_id"]: row for row in pq.read_table(run / "trials.parquet").to_pylist()}
    for name in ("trials.parquet", "epochs.parquet", "optuna.db"):
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "best")
    # One trial is still in its first epoch: only its first result is written, not marked done.
    busy = next(t for t, row in trials.items() if row["epochs_run"] == 3)
    result = run / f"trial_{busy}" / "result.json"
    first = json.loads(result.read_text().splitlines()[0])
    assert first["done"] is False
    result.write_text(json.dumps(first) + "\n")

    page = write_report(str(run))
    table = {row["trial_id"]: row for row in _page(page).table()}
    assert set(table) == set(trials)  # every trial, from its result.json
    assert table[busy]["status"] == "running" and table[busy]["steps"] == "5"
    for trial_id, row in trials.items():
        if trial_id != busy:
            assert table[trial_id]["status"] == row["status"]
            assert float(table[trial_id]["val_acc"]) == pytest.approx(row["val_acc"], rel=1e-3)
    text = page.read_text()
    assert "has not finished" in text and "no best/model.pt yet" in text
    for name in FIGURES[:5]:
        assert (page.parent / name).is_file()
    assert "1 running" in summary_lines(str(run))[0]


@pytest.mark.slow
def test_a_run_at_a_file_uri_is_reported_into_a_local_folder(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = write_report(finished.as_uri())
    assert page == tmp_path / "report-full" / "index.html"
    for name in FIGURES:  # best/model.pt and the tables came through pyarrow.fs
        assert (page.parent / name).is_file(), name
    assert len(_page(page).table()) == 6


@pytest.mark.slow
def test_missing_data_is_said_on_the_page_and_names_are_escaped(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "gone <b>&")
    record = json.loads((run / "tuner.json").read_text())
    record["settings"]["data"] = str(tmp_path / "deleted-data")
    (run / "tuner.json").write_text(json.dumps(record))
    page = write_report(str(run))
    text = page.read_text()
    assert "cannot be read" in text and "deleted-data" in text
    assert not (page.parent / "confusion.png").exists()
    assert "gone &lt;b&gt;&amp;" in text and "<b>" not in text


@pytest.mark.slow
def test_importance_comes_from_the_stored_study_else_from_the_table(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "study")
    (run / "optuna.db").unlink(missing_ok=True)
    with open_run(str(run)) as loaded:
        from_table = param_importances(loaded)
        rows = loaded.trials
    assert "in-memory Optuna study" in from_table.source
    # A real SQLite study with the same trials, as the search stores it (optuna.db).
    study = optuna.create_study(study_name="full", storage=f"sqlite:///{run / 'optuna.db'}", direction="maximize")
    with open_run(str(run)) as loaded:
        study.add_trials(_frozen_trials(rows, loaded.searched))
        stored = param_importances(loaded)
    assert "RUN/optuna.db" in stored.source and f"{len(rows)} completed trials" in stored.source
    assert stored.values and set(stored.values) <= set(loaded.searched)
    assert sum(stored.values.values()) == pytest.approx(1.0)
    assert list(stored.values.values()) == sorted(stored.values.values(), reverse=True)


def _frozen_trials(rows, searched):
    from optuna.distributions import FloatDistribution, IntDistribution

    trials = []
    for row in rows:
        params = {n: row[n] for n in searched if row.get(n) is not None}
        dists = {n: IntDistribution(0, 2) if n == "unfreeze_depth" else
                 FloatDistribution(1e-5, 1e-2, log=True) if n.startswith("lr_") else FloatDistribution(0.0, 0.5)
                 for n in params}
        trials.append(optuna.trial.create_trial(params=params, distributions=dists, value=row["val_acc"]))
    return trials


@pytest.mark.slow
def test_importance_with_too_few_trials_says_why(finished, tmp_path):
    run = _copy_run(finished, tmp_path / "one")
    (run / "optuna.db").unlink(missing_ok=True)
    table = pq.read_table(run / "trials.parquet")
    pq.write_table(table.slice(0, 1), run / "trials.parquet")
    page = write_report(str(run))
    assert not (page.parent / "importance.png").exists()
    assert "only 1 trial(s) with a result" in page.read_text()


@pytest.mark.slow
# CI installs Chromium (.ci/run), so there a missing browser fails the test instead of skipping it.
@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                    reason="headless Chromium is not installed (apt-get install chromium)")
def test_chromium_loads_every_image_of_the_page(report, tmp_path):
    """A real browser opens the page from disk; a copy gets a probe script (the report itself has none)."""
    copy = shutil.copytree(report.parent, tmp_path / "page")
    probe = ("<script>addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
             "document.body.dataset.total = imgs.length; });</script></body>")
    (copy / "index.html").write_text((copy / "index.html").read_text().replace("</body>", probe))

    def loaded() -> tuple[int, int]:
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", (copy / "index.html").as_uri()],
                             check=False, capture_output=True, text=True, timeout=120).stdout
        found = re.search(r'data-loaded="(\d+)" data-total="(\d+)"', dom)
        assert found, dom[-2000:]
        return int(found[1]), int(found[2])

    assert loaded() == (len(FIGURES), len(FIGURES))
    (copy / "parallel.png").unlink()  # the probe does notice a missing image
    assert loaded() == (len(FIGURES) - 1, len(FIGURES))


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing", lambda p: p.as_uri()])
def test_a_folder_that_is_not_a_run_is_a_user_error(tmp_path, make):
    where = make(tmp_path)
    with pytest.raises(UserError, match=r"is not a tuner run \(no tuner.json\); pass a run folder") as err:
        write_report(str(where))
    assert str(where) in str(err.value)
    assert not (tmp_path / "report").exists()


# --- diverged and failed trials (tables written here: no search) ---------------------------------

NAN = float("nan")
RECORD = {"space": "space.py", "fixed": {"weights": "none"}, "searched": ["lr_head", "aug_strength"],
          "settings": {"metric": "val_acc", "max_epochs": 3, "grace_period": 1, "reduction_factor": 2,
                       "data": "/nowhere"},
          "budget": {"steps": 3, "round_steps": 1, "grace_steps": 1, "reason": "--max-epochs 3 x 1 steps"}}
WARNING = "checkpoint trial_c/checkpoint_000001/trainer.pt is damaged; resumed from epoch 1"
DIVERGED_ERROR = "training diverged in epoch 2: loss is nan; lower the learning rates"


def _epoch(trial_id, epoch, val_acc, **extra):
    return {"trial_id": trial_id, "training_iteration": epoch, "epoch": epoch, "step": epoch, "budget_steps": epoch,
            "val_acc": val_acc,
            "val_loss": NAN if math.isnan(val_acc) else 1.0 - val_acc, "train_loss": 1.0,
            "reported_at": 1000.0 + 60 * epoch + ord(trial_id[-1]), "time_total_s": 60.0 * epoch,
            "diverged": False, **extra}


def _problem_epochs() -> dict[str, list[dict]]:
    """a: completed; b: stopped early; c: diverged in epoch 2 (NaN val metrics); d: errored in epoch 1;
    e: completed after resuming from an older checkpoint (a warning)."""
    return {
        "a": [_epoch("a", 1, 0.4), _epoch("a", 2, 0.5), _epoch("a", 3, 0.6)],
        "b": [_epoch("b", 1, 0.2)],
        "c": [_epoch("c", 1, 0.3), _epoch("c", 2, NAN, diverged=True, train_loss=NAN)],
        "d": [],
        "e": [_epoch("e", 1, 0.35), _epoch("e", 2, 0.45, warning=WARNING), _epoch("e", 3, 0.55)],
    }


def _problem_trials() -> list[dict]:
    def row(trial_id, status, epochs, best_epoch, val_acc, lr, error=None, warning=None):
        return {"trial_id": trial_id, "status": status, "epochs_run": epochs, "steps": epochs, "budget_steps": epochs,
                "stopped_early": status == "stopped_early", "best_epoch": best_epoch, "best_step": best_epoch,
                "val_acc": val_acc, "val_loss": None if val_acc is None else 1 - val_acc,
                "seconds": 60.0 * epochs, "node": "n", "error": error, "warning": warning,
                "lr_head": lr, "aug_strength": lr * 10}

    return [row("a", "completed", 3, 3, 0.6, 1e-3), row("b", "stopped_early", 1, 1, 0.2, 1e-4),
            row("c", "diverged", 2, 1, 0.3, 5e-3, error=DIVERGED_ERROR),
            row("d", "errored", 0, None, None, 2e-3, error="injected fault (TUNER_FAULT) at epoch 1, step 1"),
            row("e", "completed", 3, 3, 0.55, 3e-4, warning=WARNING)]


def _problem_run(folder: Path, trials: list[dict] | None = None) -> Path:
    import pyarrow as pa

    folder.mkdir(parents=True)
    (folder / "tuner.json").write_text(json.dumps(RECORD))
    pq.write_table(pa.Table.from_pylist(trials or _problem_trials()), folder / "trials.parquet")
    epochs = [e for rows in _problem_epochs().values() for e in rows]
    columns = list(dict.fromkeys(k for e in epochs for k in e))
    pq.write_table(pa.Table.from_pylist([{c: e.get(c) for c in columns} for e in epochs]), folder / "epochs.parquet")
    return folder


class _Problems(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.items, self._in = [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "ul" and dict(attrs).get("id") == "problems":
            self._in = True
        elif self._in and tag == "li":
            self.items.append("")

    def handle_data(self, text):
        if self._in and self.items:
            self.items[-1] += text

    def handle_endtag(self, tag):
        if tag == "ul":
            self._in = False


def _check_problem_page(page: Path) -> None:
    text = page.read_text()
    assert "could not be drawn" not in text  # NaN epochs do not break a figure
    for name in ("best_so_far.png", "learning_curves.png", "hyperparameters.png", "parallel.png"):
        with Image.open(page.parent / name) as image:
            image.verify()
    assert "2 completed, 1 stopped early by ASHA, 1 diverged, 1 errored, 0 running" in text
    table = {row["trial_id"]: row for row in _page(page).table()}
    assert table["c"]["status"] == "diverged" and float(table["c"]["val_acc"]) == pytest.approx(0.3)
    assert "d" not in table  # no result: not ranked
    items = _Problems(text).items
    assert items == [
        f"trial 3 (c) diverged: {DIVERGED_ERROR}",
        f"trial 4 (e) warning: {WARNING}",
        "trial 5 (d) errored: injected fault (TUNER_FAULT) at epoch 1, step 1",  # no report: numbered last
    ], items


def test_diverged_and_failed_trials_are_counted_and_listed_with_their_errors(tmp_path):
    run = _problem_run(tmp_path / "problems")
    page = write_report(str(run))
    _check_problem_page(page)
    with open_run(str(run)) as loaded:
        lines = summary_lines(loaded)
    assert "5 trials: 2 completed, 1 stopped early by ASHA, 1 diverged, 1 errored, 0 running" in lines[0]
    assert "best: trial 1 (a) val_acc 0.6000 at epoch 3" == lines[1]


def test_trials_are_named_and_ordered_by_the_number_column_not_by_start(tmp_path):
    """trials.parquet's `number` (the order the search created its trials) names them, whatever order they
    started in: d, created second, errored before its first report."""
    numbers = {"a": 1, "d": 2, "b": 3, "c": 4, "e": 5}
    run = _problem_run(tmp_path / "numbered", [{"number": numbers[t["trial_id"]], **t} for t in _problem_trials()])
    with open_run(str(run)) as loaded:
        assert [(t["number"], t["trial_id"]) for t in loaded.trials] == sorted((n, i) for i, n in numbers.items())
        assert problems(loaded) == [
            "trial 2 (d) errored: injected fault (TUNER_FAULT) at epoch 1, step 1",
            f"trial 4 (c) diverged: {DIVERGED_ERROR}",
            f"trial 5 (e) warning: {WARNING}",
        ]
        assert summary_lines(loaded)[1] == "best: trial 1 (a) val_acc 0.6000 at epoch 3"


def test_a_run_made_before_the_epochs_run_column_is_reported_with_it(tmp_path):
    """trials.parquet named the epochs a trial ran `epochs` until it became `epochs_run`."""
    old = [{("epochs" if k == "epochs_run" else k): v for k, v in row.items()} for row in _problem_trials()]
    run = _problem_run(tmp_path / "old", old)
    assert "epochs" in pq.read_schema(run / "trials.parquet").names
    _check_problem_page(write_report(str(run)))
    with open_run(str(run)) as loaded:
        by_id = {t["trial_id"]: t for t in loaded.trials}
    assert {k: t["epochs_run"] for k, t in by_id.items()} == {"a": 3, "b": 1, "c": 2, "d": 0, "e": 3}
    assert not any("epochs" in t for t in by_id.values())


def test_a_run_recorded_before_distributions_and_rungs_is_reported_with_derived_ones(tmp_path):
    """RECORD is a tuner.json from before it held the distributions and rungs: the learning rates get a log
    axis (the rule reports guessed by), the rungs come from its budget (grace 1, factor 2, 3 steps)."""
    run = _problem_run(tmp_path / "old-record")
    assert "distributions" not in RECORD and "rungs" not in RECORD
    with open_run(str(run)) as loaded:
        assert loaded.log_scaled == {"lr_head"} and loaded.rungs == [1, 2]
    _check_problem_page(write_report(str(run)))


def _distribution(name, log):
    return {"name": name, "kind": "float", "low": 1e-5, "high": 1.0, "log": log, "step": None, "choices": None}


def test_an_axis_is_log_exactly_where_the_space_searched_on_a_log_scale(tmp_path):
    """A rate drawn uniformly gets a linear axis, a log-drawn one without an lr_ prefix a log axis."""
    from tuner.report import figures

    record = {**RECORD, "searched": ["lr_head", "aug_strength"], "rungs": [1],
              "distributions": [_distribution("lr_head", False), _distribution("aug_strength", True)]}
    run = _problem_run(tmp_path / "declared")
    (run / "tuner.json").write_text(json.dumps(record))
    with open_run(str(run)) as loaded:
        assert loaded.log_scaled == {"aug_strength"} and loaded.rungs == [1]
        trials, names = ranked(loaded), loaded.searched
        figure = figures.metric_by_hyperparameter(trials, names, "val_acc", tmp_path / "hyper.png",
                                                  log_scaled=loaded.log_scaled)
    assert [ax.get_xscale() for ax in figure.axes[:len(names)]] == ["linear", "log"]
    _check_problem_page(write_report(str(run)))


def test_a_running_search_knows_diverged_trials_errors_and_warnings_from_ray_files(tmp_path):
    """The same trials as Ray's trial_*/result.json (NaN written as NaN), params.json and error.txt."""
    run = tmp_path / "running"
    run.mkdir()
    (run / "tuner.json").write_text(json.dumps(RECORD))
    configs = {t["trial_id"]: {"lr_head": t["lr_head"], "aug_strength": t["aug_strength"]} for t in _problem_trials()}
    for trial_id, epochs in _problem_epochs().items():
        folder = run / f"trial_{trial_id}"
        folder.mkdir()
        done = trial_id in ("b", "c")  # Ray marks the last result of a trial that ended before max_epochs
        (folder / "result.json").write_text("".join(
            json.dumps({**e, "config": configs[trial_id], "done": done and i == len(epochs) - 1}) + "\n"
            for i, e in enumerate(epochs)))
        (folder / "params.json").write_text(json.dumps(configs[trial_id]))
    (run / "trial_d" / "error.txt").write_text(
        "Failure # 1 (occurred at 2025-01-01_10-00-00)\nray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
        '  File "trainable.py", line 80, in train_trial\n'
        "RuntimeError: injected fault (TUNER_FAULT) at epoch 1, step 1\n\n")
    with open_run(str(run)) as loaded:
        assert not loaded.finished
        rows = {t["trial_id"]: t for t in loaded.trials}
    assert {k: rows[k]["status"] for k in rows} == {t["trial_id"]: t["status"] for t in _problem_trials()}
    assert rows["c"]["error"] == DIVERGED_ERROR and rows["c"]["best_epoch"] == 1
    assert rows["d"]["error"] == "RuntimeError: injected fault (TUNER_FAULT) at epoch 1, step 1"
    assert rows["e"]["warning"] == WARNING and rows["a"]["warning"] is None and rows["a"]["error"] is None
    page = write_report(str(run))
    text = page.read_text()
    assert "could not be drawn" not in text and "1 diverged" in text
    assert f"trial 3 (c) diverged: {DIVERGED_ERROR}" in _Problems(text).items


def test_figures_leave_out_nan_points(tmp_path):
    from tuner.report import figures

    curves = {"a": ("completed", [1, 2, 3], [0.4, 0.5, 0.6]), "c": ("diverged", [1, 2], [0.3, NAN]),
              "x": ("diverged", [1], [NAN])}  # diverged in its first epoch: nothing to draw
    figures.learning_curves(curves, "val_acc", [1, 2], tmp_path / "curves.png")
    trials = [{"number": 1, "val_acc": 0.6, "status": "completed", "lr_head": 1e-3},
              {"number": 2, "val_acc": NAN, "status": "diverged", "lr_head": 1e-2},
              {"number": 3, "val_acc": None, "status": "errored", "lr_head": 1e-4}]
    figures.best_so_far(trials, [(1.0, 0.4), (2.0, NAN), (3.0, 0.6)], "val_acc", "max", tmp_path / "best.png")
    figures.metric_by_hyperparameter(trials, ["lr_head"], "val_acc", tmp_path / "hyper.png", log_scaled={"lr_head"})
    figures.parallel_coordinates(trials, ["lr_head"], "val_acc", tmp_path / "parallel.png", log_scaled={"lr_head"})
    for name in ("curves.png", "best.png", "hyper.png", "parallel.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()


def test_the_report_names_the_trials_within_noise_and_the_delivered_one(tmp_path):
    compared = {"a": (True, 1.0, 0.0, 0.0), "e": (True, 0.63, -0.15, 0.05), "c": (False, 0.001, -0.45, -0.15)}
    trials = []
    for row in _problem_trials():
        within, p, low, high = compared.get(row["trial_id"], (None, None, None, None))
        trials.append({**row, "delivered": row["trial_id"] == "e", "within_noise": within, "mcnemar_p": p,
                       "diff_low": low, "diff_high": high})
    run = _problem_run(tmp_path / "chosen", trials)
    reason = "2 trials are within noise of the best (McNemar p >= 0.05): a, e; delivered the cheapest, trial e"
    (run / "best").mkdir()
    (run / "best" / "metrics.json").write_text(json.dumps({"trial_id": "e", "selection": reason}))
    with open_run(str(run)) as loaded:
        lines = summary_lines(loaded)
    assert lines[2] == f"delivered: trial 4 (e): {reason}"  # e started fourth (d has no report)
    text = write_report(str(run)).read_text()
    assert html.escape(f"best/ holds trial 4 (e): {reason}.") in text
    assert "<li>trial 1 (a): val_acc 0.6000, McNemar p 1.000, interval [+0.0000, +0.0000]</li>" in text
    assert "<li>trial 4 (e): val_acc 0.5500, McNemar p 0.630, interval [-0.1500, +0.0500] (delivered)</li>" in text
    assert "trial 3 (c)" not in text.split('id="within-noise"')[1].split("</ul>")[0]  # told apart: not listed


def test_a_report_without_a_recorded_choice_has_no_delivery_section(tmp_path):
    run = _problem_run(tmp_path / "before")
    assert "Which trial was delivered" not in write_report(str(run)).read_text()
    with open_run(str(run)) as loaded:
        assert not any(line.startswith("delivered:") for line in summary_lines(loaded))
