"""The whole search killed with SIGKILL at different points, then `tuner resume`: nothing lost or re-run.

The crash comes through the TUNER_FAULT hook (tuner/testing/faults.py) as `crash`: SIGKILL to the process
group of the driver, its Ray and its trials, as a machine that loses power, at a point named exactly.
"""

import json
import os

import pyarrow.parquet as pq
import pytest
from stopped_searches import tuner_in_session, write_tiny_search

pytestmark = pytest.mark.slow

SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16, "trials": 3,
            "max_epochs": 2, "grace_period": 2, "max_concurrent": 1, "refit": "off"}  # best/: the search's choice

def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
"""

# (where the search dies, the TUNER_FAULT that kills it there). `after` lets the first occasions pass,
# so that at least one trial has finished before the crash.
CRASHES = {
    "trial start-up": "crash@epoch=1,step=0,after=1",  # the second trial, before its first step
    "mid-epoch": "crash@epoch=2,step=1,after=1",  # the second trial, inside its second epoch
    "checkpoint being written": "crash@point=checkpoint,after=2",  # the second trial's first checkpoint
    "results being exported": "crash@point=export",  # the tables written, best/ not yet
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crashes")
    return write_tiny_search(root, SPACE)


def finished_trials(run) -> dict[str, str]:
    """result.json of every trial that had reported both epochs: trial folder -> its text."""
    done = {}
    for folder in run.glob("trial_*"):
        results = folder / "result.json"
        if results.is_file() and len(results.read_text().splitlines()) == 2:
            done[folder.name] = results.read_text()
    return done


@pytest.mark.parametrize("point", CRASHES)
def test_a_search_killed_at_any_point_resumes_without_losing_or_rerunning_trials(root, point):
    name = point.replace(" ", "-")
    markers = root / f"markers-{name}"
    markers.mkdir()
    crash = {**os.environ, "TUNER_FAULT": CRASHES[point], "TUNER_FAULT_DIR": str(markers)}
    killed = tuner_in_session("search", "--space", str(root / "space.py"), "--data", str(root / "data"),
                   "--storage", str(root / "runs"), "--name", name, env=crash, pgid_file=markers / "search.pgid")
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]  # SIGKILL, at that point
    assert list(markers.glob("fault*")), "the fault never fired"
    run = root / "runs" / name
    before = finished_trials(run)
    assert before, "no trial had finished before the crash"

    resumed = tuner_in_session("resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert len(trials) == 3 and len({row["trial_id"] for row in trials}) == 3  # one row per trial
    assert all(row["status"] == "completed" and row["epochs_run"] == 2 for row in trials)
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    assert sorted((row["trial_id"], row["epoch"]) for row in epochs) == sorted(
        (row["trial_id"], epoch) for row in trials for epoch in (1, 2))
    for folder, results in before.items():  # finished trials were neither lost nor trained again
        assert (run / folder / "result.json").read_text() == results
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["val_acc"] == max(row["val_acc"] for row in trials)  # best/ is the best of all trials
