"""Every way a search stops is a state the run folder knows, and `tuner resume` loses nothing after it.

Real signals to a real `tuner search` process (through the TUNER_FAULT hook, at a point named exactly:
inside a trial's epoch, or during the export), a run folder moved with `mv`, a time budget and errored
trials; each case is then measured the same way (`damage`): finished trials lost, rounds trained twice,
checkpoints deleted that resume needed, and optuna.db rows that disagree with trials.parquet. README's
reliability table is these tests.
"""

import json
import os
import shutil

import optuna
import pyarrow.parquet as pq
import pytest
from stopped_searches import tuner_in_session, write_tiny_search

from tuner.report.run import open_run
from tuner.report.study_check import study_disagreements

pytestmark = pytest.mark.slow

BUDGET_ROUNDS = 3  # a report an epoch, 3 epochs of 2 steps

# (what stops the search, the TUNER_FAULT that does it, the exit code). after=4: the second trial's second
# epoch (the first trial's three epochs and the second's first pass by), so one trial has finished.
STOPS = {
    "SIGINT in an epoch": ("sigint@epoch=2,step=1,after=1", 130),
    "Ctrl-C (SIGINT to the process group) in an epoch": ("ctrlc@epoch=2,step=1,after=1", 130),
    "SIGINT twice in an epoch": ("sigint@epoch=2,step=1,after=1,times=2", 130),
    "SIGTERM in an epoch": ("sigterm@epoch=2,step=1,after=1", 143),
    "SIGINT during the export": ("sigint@point=export", 130),
    "SIGTERM during the export": ("sigterm@point=export", 143),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_search(tmp_path_factory.mktemp("interruptions"))


def tuner(*args, env=None, markers=None):
    return tuner_in_session(*args, env=env, pgid_file=markers / "search.pgid" if markers else None)


def search(root, name, fault=None, *flags):
    markers = root / f"markers-{name}"
    markers.mkdir()
    env = {**os.environ, "TUNER_FAULT": fault or "", "TUNER_FAULT_DIR": str(markers)}
    return tuner("search", "--space", str(root / "space.py"), "--data", str(root / "data"), "--storage",
                 str(root / "runs"), "--name", name, *flags, env=env, markers=markers)


def reports(run) -> dict[str, list[dict]]:
    """Each trial folder's reports (result.json lines)."""
    found = {}
    for folder in run.glob("trial_*"):
        text = (folder / "result.json").read_text() if (folder / "result.json").is_file() else ""
        found[folder.name] = [json.loads(line) for line in text.splitlines()]
    return found


def finished(run) -> dict[str, list[dict]]:
    return {name: rows for name, rows in reports(run).items() if len(rows) == BUDGET_ROUNDS}


def checkpoints(run) -> dict[str, list[str]]:
    return {folder.name: sorted(p.name for p in folder.glob("checkpoint_*")) for folder in run.glob("trial_*")}


def damage(run, before: dict[str, list[dict]]) -> dict[str, int]:
    """The fault table's columns, after the resume: trials that had finished before the stop and changed or
    vanished since, rounds reported twice by one trial, and optuna.db rows that disagree with trials.parquet."""
    after = reports(run)
    with open_run(str(run)) as data:
        compared, disagree = study_disagreements(data)
    return {
        "finished trials lost": sum(after.get(name) != rows for name, rows in before.items()),
        "rounds trained twice": sum(len(rows) - len({r["budget_steps"] for r in rows}) for rows in after.values()),
        "optuna.db disagreements": len(disagree) + (compared != len(after)),
    }


def statuses(run) -> dict[str, str]:
    return {row["trial_id"]: row["status"] for row in pq.read_table(run / "trials.parquet").to_pylist()}


@pytest.mark.parametrize("stop", STOPS)
def test_a_signal_leaves_a_run_that_resumes_without_loss(root, stop):
    fault, code = STOPS[stop]
    name = stop.replace(" ", "-")
    stopped = search(root, name, fault)
    assert stopped.returncode == code, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "tuner resume" in stopped.stdout + stopped.stderr  # the user is told how to go on
    run = root / "runs" / name
    before, kept = finished(run), checkpoints(run)
    assert before, "no trial had finished before the signal"
    unfinished = {f: c for f, c in kept.items() if f not in before and reports(run)[f]}
    if (run / "trials.parquet").is_file() and "export" not in stop:  # exported after a graceful stop
        status = statuses(run)
        assert "stopped_early" not in status.values()  # an interrupted trial is never taken for an ASHA stop
        assert sorted(s for s in status.values() if s != "completed") == ["interrupted"] * (len(status) - len(before))
        assert all(kept[f] for f in unfinished)  # the interrupted trial's checkpoints stay for resume
        with open_run(str(run)) as data:
            assert study_disagreements(data)[1] == []

    resumed = tuner("resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert sorted(statuses(run).values()) == ["completed"] * 3 and len(list(run.glob("trial_*"))) == 3
    assert damage(run, before) == {"finished trials lost": 0, "rounds trained twice": 0,
                                   "optuna.db disagreements": 0}
    assert "Could not recover" not in resumed.stdout + resumed.stderr  # no checkpoint resume needed was gone


def test_a_moved_run_resumes_where_it_is_now_and_leaves_nothing_where_it_was(root):
    stopped = search(root, "to-move", STOPS["SIGINT in an epoch"][0])
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    old, new = root / "runs" / "to-move", root / "moved" / "here"
    new.parent.mkdir()
    before = finished(old)
    shutil.move(old, new)

    resumed = tuner("resume", str(new), "--trials", "1")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not old.exists()  # no empty optuna.db (or anything else) made where the run was
    assert sorted(statuses(new).values()) == ["completed"] * 4 and len(list(new.glob("trial_*"))) == 4
    assert json.loads((new / "tuner.json").read_text())["settings"]["trials"] == 4
    assert damage(new, before) == {"finished trials lost": 0, "rounds trained twice": 0,
                                   "optuna.db disagreements": 0}


def test_trials_stopped_by_the_time_budget_are_pruned_in_the_study(root):
    done = search(root, "time-budget", None, "--time-budget", "25", "--trials", "20", "--max-epochs", "30")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = root / "runs" / "time-budget"
    status = statuses(run)
    assert "stopped_early" in status.values() and "interrupted" not in status.values()
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    states = {t.user_attrs["trial_id"]: t.state.name for t in study.trials if "trial_id" in t.user_attrs}
    assert "RUNNING" not in states.values()  # Ray never tells a searcher of these; the export does
    # Stopped with a result: PRUNED. One the budget stopped before its first report has no value: FAIL
    # (outcomes.optuna_state), whichever moment the budget ran out.
    value = {row["trial_id"]: row["val_acc"] for row in pq.read_table(run / "trials.parquet").to_pylist()}
    stopped = [t for t, s in status.items() if s == "stopped_early"]
    assert {states[t] for t in stopped if value[t] is not None} == {"PRUNED"}
    assert {states[t] for t in stopped if value[t] is None} <= {"FAIL"}
    assert damage(run, {})["optuna.db disagreements"] == 0


def test_an_errored_trial_goes_on_from_its_checkpoint_under_its_own_id(root):
    # The second trial fails in its second epoch on every try (max_failures 1: two tries), then resume.
    failed = search(root, "errored", "raise@epoch=2,step=0,after=1,times=2", "--max-failures", "1")
    assert failed.returncode == 0, failed.stdout[-2000:] + failed.stderr[-2000:]
    run = root / "runs" / "errored"
    errored = [t for t, s in statuses(run).items() if s == "errored"]
    assert len(errored) == 1
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    assert {t.state.name for t in study.trials if t.user_attrs.get("trial_id") == errored[0]} == {"FAIL"}
    assert checkpoints(run)[f"trial_{errored[0]}"]  # kept for resume
    before = finished(run)

    resumed = tuner("resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert statuses(run)[errored[0]] == "completed" and len(list(run.glob("trial_*"))) == 3
    rounds = reports(run)[f"trial_{errored[0]}"]
    assert [r["epoch"] for r in rounds] == [1, 2, 3]  # epoch 1 from its checkpoint, not trained again
    assert damage(run, before) == {"finished trials lost": 0, "rounds trained twice": 0,
                                   "optuna.db disagreements": 0}
