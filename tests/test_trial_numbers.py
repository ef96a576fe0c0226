"""One name per trial: a number in the order the search created its trials, beside its id, in the progress
lines, the summary, trials.parquet, epochs.parquet, the study and the report; kept by `tuner resume`, whose
new trials go on counting."""

import pickle
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import optuna
import pyarrow.parquet as pq
import pytest

from tuner.errors import UserError
from tuner.report.page import summary_lines
from tuner.report.run import open_run
from tuner.runs.budget import search_budget
from tuner.runs.settings import RunSettings
from tuner.search.driver import study_searcher
from tuner.search.results import ranked_checkpoints, trial_rows
from tuner.search.space import check_space, load_space
from tuner.search.study import agree_with_table, study_storage
from tuner.train.config import make_config
from tuner.train.demo_data import write_demo_data


def _searcher(run):
    space = load_space("finetune")
    space.fixed = {"model": "resnet18"}
    check_space(space)
    return study_searcher(space, RunSettings(trials=8), str(run), "numbers", search_budget(100, 32))


def _ran(run) -> list:
    """The study's trials that a Ray trial ran (START's points wait in the study until asked)."""
    study = optuna.load_study(study_name=None, storage=study_storage(str(run)))
    return [t for t in study.trials if "trial_id" in t.user_attrs]


def test_the_searcher_numbers_trials_in_the_order_it_creates_them(tmp_path):
    searcher = _searcher(tmp_path)
    configs = [searcher.suggest(trial_id) for trial_id in ("x", "y", "z")]
    assert [config["number"] for config in configs] == [1, 2, 3]
    assert searcher.suggest("y")["number"] == 2  # asked again: the same trial, the same number
    assert {t.user_attrs["trial_id"]: t.user_attrs["number"] for t in _ran(tmp_path)} == {"x": 1, "y": 2, "z": 3}
    # No hyperparameter: the trainable takes it out before TrainConfig.
    with pytest.raises(UserError, match="unknown hyperparameter 'number'"):
        make_config(configs[0])
    make_config({k: v for k, v in configs[0].items() if k != "number"})


def test_a_restored_searcher_goes_on_counting(tmp_path):
    """Ray pickles the searcher with the run; restored trials are not suggested again, new ones are."""
    searcher = _searcher(tmp_path)
    for trial_id in ("x", "y", "z"):
        searcher.suggest(trial_id)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = pickle.loads(pickle.dumps(searcher))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [restored.suggest(trial_id)["number"] for trial_id in ("v", "w")] == [4, 5]
    assert restored.trial_number("y") == 2


def test_a_failed_trial_that_a_resume_continues_keeps_its_number(tmp_path):
    """Optuna never takes a FAIL back: the continued trial is a new study trial, with the old one's number."""
    searcher = _searcher(tmp_path)
    searcher.suggest("x")
    searcher.suggest("y")
    searcher.on_trial_complete("x", error=True)
    agree_with_table(str(tmp_path), [{"trial_id": "x", "status": "errored", "val_acc": None},
                                     {"trial_id": "y", "status": "interrupted", "val_acc": None}], "val_acc")
    restored = pickle.loads(pickle.dumps(searcher))
    restored.on_trial_result("x", {"val_acc": 0.5, "budget_steps": 10})
    trials = [t for t in _ran(tmp_path) if t.user_attrs["trial_id"] == "x"]
    assert [t.state.name for t in trials] == ["FAIL", "RUNNING"]
    assert [t.user_attrs["number"] for t in trials] == [1, 1] and restored.trial_number("x") == 1
    assert restored.suggest("z")["number"] == 3


def _result(trial_id, number, val_acc):
    """A Ray Result as results.py reads it: metrics, config, folder, error, best checkpoints."""
    metrics = {"trial_id": trial_id, "number": number, "epoch": 2, "step": 4, "budget_steps": 4, "val_acc": val_acc}
    return SimpleNamespace(metrics=metrics, config={"number": number, "lr_head": 0.01}, path=f"/x/trial_{trial_id}",
                           error=None, metrics_dataframe=None,
                           best_checkpoints=[(f"checkpoint of {trial_id}", metrics)])


def test_a_resumed_grid_in_another_order_gives_the_same_table_and_ranking():
    """Ray lists a resumed search's restored trials in another order than it created them."""
    grid = [_result("c1", 1, 0.5), _result("a2", 2, 0.5), _result("b3", 3, 0.25), _result("e4", 4, 0.5)]
    settings, budget = RunSettings(), search_budget(32, 16)
    for order in (grid, grid[2::-1] + grid[3:]):
        assert [row["number"] for row in trial_rows(order, settings, ["lr_head"], budget)] == [1, 2, 3, 4]
        # A tie goes by trial id, as the selection's candidates do: the same first trial in every export.
        assert [m["trial_id"] for _, m in ranked_checkpoints(order, "val_acc", "max")] == ["a2", "c1", "e4", "b3"]
    assert [m["trial_id"] for _, m in ranked_checkpoints(grid, "val_acc", "min")] == ["b3", "a2", "c1", "e4"]


# --- a real search, then `tuner resume RUN --trials 2` -------------------------------------------

SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16, "trials": 3,
            "max_epochs": 2, "grace_period": 2, "max_concurrent": 1, "refit": "off"}

def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
"""
NAMED = re.compile(r"trial +(\d+) \((\w+)\)")  # `trial 3 (634b7ffc)`, `trial   3 (634b7ffc)`


def _tuner(*args):
    result = subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _names(text: str) -> dict[str, str]:
    """id -> number of every `trial N (id)` in `text`; each id with one number, each number with one id."""
    pairs = {(number, trial_id) for number, trial_id in NAMED.findall(text)}
    assert len({i for _, i in pairs}) == len(pairs) == len({n for n, _ in pairs}), sorted(pairs)
    return {trial_id: int(number) for number, trial_id in pairs}


def _started(text: str) -> dict[str, int]:
    return {trial_id: int(number) for number, trial_id in
            re.findall(r"\] trial +(\d+) \((\w+)\) (?:started|resumed)", text)}


def _table(run, name) -> list[dict]:
    return pq.read_table(run / name).to_pylist()


@pytest.mark.slow
def test_every_view_of_a_search_and_its_resume_gives_a_trial_one_number(tmp_path):
    write_demo_data(tmp_path / "data", train_per_class=4, val_per_class=2, test_per_class=0)
    (tmp_path / "space.py").write_text(textwrap.dedent(SPACE))
    run = tmp_path / "runs" / "numbered"
    searched = _tuner("search", "--space", str(tmp_path / "space.py"), "--data", str(tmp_path / "data"),
                      "--storage", str(tmp_path / "runs"), "--name", "numbered")
    first = _started(searched)
    assert sorted(first.values()) == [1, 2, 3]
    assert _names(searched) == first  # progress and summary: each id under its one number
    summary = searched.split("top trials by", 1)[1]
    assert re.search(r"delivered: trial \d \(\w+\) epoch", summary)
    assert {row["trial_id"]: row["number"] for row in _table(run, "trials.parquet")} == first

    resumed = _tuner("resume", str(run), "--trials", "2")
    # Ties are likely on 2 validation images a class: the export delivers as before, never passing over a
    # trial whose checkpoints the first export deleted as a damaged one.
    assert "damaged" not in resumed
    new = _started(resumed)
    assert sorted(new.values()) == [4, 5] and not set(new) & set(first)
    everyone = {**first, **new}
    assert _names(resumed).items() <= everyone.items()  # the old trials keep their numbers in the summary
    rows = _table(run, "trials.parquet")
    assert {row["trial_id"]: row["number"] for row in rows} == everyone
    assert {(row["trial_id"], row["number"]) for row in _table(run, "epochs.parquet")} == set(everyone.items())
    assert {t.user_attrs["trial_id"]: t.user_attrs["number"] for t in _ran(run)} == everyone
    with open_run(str(run)) as data:
        assert [(t["number"], t["trial_id"]) for t in data.trials] == sorted((n, i) for i, n in everyone.items())
        best = summary_lines(data)[1]
    number, trial_id = NAMED.search(best).groups()
    assert everyone[trial_id] == int(number), best
