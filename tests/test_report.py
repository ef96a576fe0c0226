"""`tuner report`: the HTML page and figures of a real search (local Ray, Optuna, ASHA; tiny data)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tuner import data
from tuner.demo_data import write_demo_data
from tuner.errors import UserError
from tuner.report import (
    best_model_analysis,
    open_run,
    param_importances,
    summary_lines,
    write_report,
)

SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "trials": 5,
            "max_epochs": 3, "grace_period": 1, "reduction_factor": 2, "max_concurrent": 2}

def space(trial):
    depth = trial.suggest_int("unfreeze_depth", 0, 2)
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
    for stage in ("layer4", "layer3")[:depth]:
        trial.suggest_float(f"lr_{stage}", 1e-5, 1e-3, log=True)
    trial.suggest_float("aug_strength", 0.0, 0.5)
"""
FIGURES = ("best_so_far.png", "learning_curves.png", "importance.png", "hyperparameters.png", "parallel.png",
           "confusion.png", "per_class.png", "misclassified.png")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 5-trial search, run through the command line as a user would."""
    root = tmp_path_factory.mktemp("report")
    write_demo_data(root / "data", train_per_class=20, val_per_class=8, test_per_class=4)
    (root / "space.py").write_text(textwrap.dedent(SPACE))
    result = subprocess.run(
        [sys.executable, "-m", "tuner", "search", "--space", str(root / "space.py"), "--data", str(root / "data"),
         "--storage", str(root / "runs"), "--name", "full"],
        check=False, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "runs" / "full"


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
        return [dict(zip(header, row)) for row in body]


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
    assert len(table) == len(trials) == 5  # top 10 of 5 trials: all of them
    assert [float(r["val_acc"]) for r in table] == sorted((float(r["val_acc"]) for r in table), reverse=True)
    searched = json.loads((finished / "tuner.json").read_text())["searched"]
    for cells in table:
        row = trials[cells["trial_id"]]
        assert cells["status"] == row["status"] and int(cells["epochs"]) == row["epochs"]
        assert int(cells["best_epoch"]) == row["best_epoch"]
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
    assert f"5 trials: {completed} completed, {stopped} stopped early by ASHA, 0 errored, 0 running" in lines[0]
    assert f"{epochs} trial-epochs" in lines[0]
    best = max(trials, key=lambda r: r["val_acc"])
    assert f"val_acc {best['val_acc']:.4f}" in lines[1]
    assert any("random init (weights none)" in line for line in lines)
    assert lines[-1] == f"report: {report}"


@pytest.mark.slow
def test_the_confusion_matrix_counts_every_validation_image_once(finished):
    splits = data.load_splits(finished.parent.parent / "data")
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
    busy = next(t for t, row in trials.items() if row["epochs"] == 3)
    result = run / f"trial_{busy}" / "result.json"
    first = json.loads(result.read_text().splitlines()[0])
    assert first["done"] is False
    result.write_text(json.dumps(first) + "\n")

    page = write_report(str(run))
    table = {row["trial_id"]: row for row in _page(page).table()}
    assert set(table) == set(trials)  # every trial, from its result.json
    assert table[busy]["status"] == "running" and table[busy]["epochs"] == "1"
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
    assert len(_page(page).table()) == 5


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
    assert "RUN/optuna.db" in stored.source and "5 completed trials" in stored.source
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
