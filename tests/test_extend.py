"""Extend a finished search (`tuner resume RUN --trials N`) and warm-start one from another (`--warm-start RUN`)."""

import json
import shutil
import subprocess
import sys
import textwrap
from collections import Counter

import optuna
import pyarrow.parquet as pq
import pytest

from tuner.errors import UserError
from tuner.runs.selection import load_candidates, select
from tuner.search.results import SELECTION_COLUMNS
from tuner.search.space import DefineByRun
from tuner.search.warm_start import fit, load_warm_start

STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def tuner(*args):
    return subprocess.run([sys.executable, "-m", "tuner", *args], capture_output=True, text=True, timeout=900)


def study_trials(run):
    return optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}").trials


def rows(path):
    return pq.read_table(path).to_pylist()


def write_space(path, body):
    path.write_text(textwrap.dedent(body))
    return DefineByRun(path, {})


def test_a_warm_start_from_a_damaged_run_record_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tuner.json").write_bytes(b"\xff\xfe\x00binary")
    space = write_space(tmp_path / "space.py", """
        def space(trial):
            trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
    """)
    with pytest.raises(UserError, match="tuner.json is not valid JSON .* the run record is damaged"):
        load_warm_start(str(run), space, "val_acc", {})


def test_a_trial_fits_only_a_space_that_asks_for_its_hyperparameters_in_range(tmp_path):
    space = write_space(tmp_path / "space.py", """
        def space(trial):
            depth = trial.suggest_int("unfreeze_depth", 0, 1)
            trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
            if depth:
                trial.suggest_float("lr_layer4", 1e-5, 1e-3, log=True)
            trial.suggest_categorical("optimizer", ["adamw", "sgd"])
        """)
    distributions, reason = fit(space, {"unfreeze_depth": 1, "lr_head": 1e-3, "lr_layer4": 1e-4, "optimizer": "sgd"})
    assert reason is None and set(distributions) == {"unfreeze_depth", "lr_head", "lr_layer4", "optimizer"}
    assert distributions["lr_head"].log and distributions["lr_head"].high == 1e-2  # the new space's ranges
    assert fit(space, {"unfreeze_depth": 1, "lr_head": 1e-3, "optimizer": "sgd"}) == (
        None, "lr_layer4 is new in this space")
    assert fit(space, {"unfreeze_depth": 2, "lr_head": 1e-3, "lr_layer4": 1e-4, "optimizer": "sgd"}) == (
        None, "unfreeze_depth out of this space's range")
    assert fit(space, {"unfreeze_depth": 0, "lr_head": 1e-3, "optimizer": "rmsprop"}) == (
        None, "optimizer out of this space's range")
    assert fit(space, {"unfreeze_depth": 0, "lr_head": 1e-3, "optimizer": "sgd", "dropout": 0.1}) == (
        None, "dropout is no longer searched")


@pytest.mark.slow
def test_resume_with_trials_adds_exactly_that_many_and_runs_nothing_again(finished_search, tmp_path):
    original, _ = finished_search
    run = tmp_path / "full"  # a copy: the extension must also stay inside a moved run folder
    shutil.copytree(original, run)
    before = {row["trial_id"]: row for row in rows(run / "trials.parquet")}
    old_results = {p.parent.name: p.read_bytes() for p in run.glob("trial_*/result.json")}

    result = tuner("resume", str(run), "--trials", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "8 trials, 2 of them new" in result.stdout and "of 8" in result.stdout

    after = {row["trial_id"]: row for row in rows(run / "trials.parquet")}
    new = set(after) - set(before)
    assert len(after) == len(before) + 2 and len(new) == 2
    # Finished rows exactly as they were, but for how they compare with the best, which new trials can change.
    own = lambda row: {k: v for k, v in row.items() if k not in SELECTION_COLUMNS}  # noqa: E731
    assert all(own(after[trial_id]) == own(row) for trial_id, row in before.items())
    epochs = rows(run / "epochs.parquet")
    key = lambda row: (row["trial_id"], row["step"])  # noqa: E731
    assert sorted((e for e in epochs if e["trial_id"] in before), key=key) == sorted(
        rows(original / "epochs.parquet"), key=key)
    assert {e["trial_id"] for e in epochs} == set(after)
    # Nothing ran again: the old trials' result logs are byte for byte the same; the new trials' are in RUN.
    logs = {p.parent.name: p.read_bytes() for p in run.glob("trial_*/result.json")}
    assert {name: logs[name] for name in old_results} == old_results
    assert {f"trial_{t}" for t in new} <= {p.name for p in run.glob("trial_*")}
    assert not any((original / f"trial_{t}").exists() for t in new)
    # The same study, in RUN/optuna.db, gained the two trials; the original's is untouched.
    trials = study_trials(run)
    assert len(trials) == 8 and {t.user_attrs["trial_id"] for t in trials[6:]} == new
    assert len(study_trials(original)) == 6
    assert json.loads((run / "tuner.json").read_text())["settings"]["trials"] == 8
    # best/ is delivered by the run's rule (within_noise, conftest) over all 8 trials: the new ones were
    # compared too, so a new winner would be best/.
    best = json.loads((run / "best" / "metrics.json").read_text())
    candidates = load_candidates(run / "val_predictions.npz")
    assert new <= {c.trial_id for c in candidates} and len(candidates) == 8
    chosen = select(candidates)
    assert (best["trial_id"], best["selection"]) == (chosen.delivered, chosen.reason)
    assert [row["trial_id"] for row in after.values() if row["delivered"]] == [best["trial_id"]]

    refused = tuner("resume", str(run), "--trials", "0")
    assert refused.returncode == 2 and "--trials" in refused.stderr and "Traceback" not in refused.stderr


# The earlier search's space with lr_head narrowed to `high` and weight_decay new for the deepest trials.
CHANGED_SPACE = """
SETTINGS = {{"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 32, "trials": 2,
            "max_steps": 15, "grace_period": 5, "reduction_factor": 2, "max_concurrent": 2}}

def space(trial):
    depth = trial.suggest_int("unfreeze_depth", 0, 2)
    trial.suggest_float("lr_head", 1e-4, {high!r}, log=True)
    for stage in ("layer4", "layer3")[:depth]:
        trial.suggest_float(f"lr_{{stage}}", 1e-5, 1e-3, log=True)
    trial.suggest_float("aug_strength", 0.0, 0.5)
    if depth == 2:
        trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True)
"""


@pytest.mark.slow
def test_warm_start_seeds_the_study_with_the_earlier_trials_that_fit(finished_search, search_root, tmp_path):
    earlier, _ = finished_search
    finished = [t for t in study_trials(earlier) if t.state in STATES]
    shallow = sorted(t.params["lr_head"] for t in finished if t.params["unfreeze_depth"] < 2)
    assert shallow, "the earlier search ran no trial of depth 0 or 1"
    high = shallow[len(shallow) // 2]  # about half of the shallow trials fall out of range
    expected, reasons = [], Counter()
    for t in finished:
        if t.params["unfreeze_depth"] == 2:
            reasons["weight_decay is new in this space"] += 1
        elif t.params["lr_head"] > high:
            reasons["lr_head out of this space's range"] += 1
        else:
            expected.append(t)
    space = tmp_path / "changed.py"
    space.write_text(CHANGED_SPACE.format(high=high))

    result = tuner("search", "--space", str(space), "--data", str(search_root / "data"), "--storage",
                   str(tmp_path / "runs"), "--name", "warm", "--warm-start", str(earlier))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"took {len(expected)} of its {len(finished)} finished trials" in result.stdout
    for reason, count in reasons.items():
        assert f"{reason}: {count}" in result.stdout

    run = tmp_path / "runs" / "warm"
    trials = study_trials(run)
    seeded, ran = trials[:len(expected)], trials[len(expected):]
    assert [t.user_attrs["warm_start_trial"] for t in seeded] == [t.user_attrs["trial_id"] for t in expected]
    assert [(t.params, t.state, t.value, t.intermediate_values) for t in seeded] == [
        (t.params, t.state, t.value, t.intermediate_values) for t in expected]
    assert {t.user_attrs["trial_id"] for t in ran} == {row["trial_id"] for row in rows(run / "trials.parquet")}
    assert len(ran) == 2 and all("warm_start_trial" not in t.user_attrs for t in ran)
    assert json.loads((run / "tuner.json").read_text())["settings"]["warm_start"] == str(earlier)


def test_warm_start_refuses_a_folder_that_is_no_run_and_another_metric(search_root, tmp_path):
    space = search_root / "space.py"
    common = ["search", "--space", str(space), "--data", str(search_root / "data"), "--storage", str(tmp_path)]
    missing = tuner(*common, "--name", "a", "--warm-start", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a tuner run" in missing.stderr and "Traceback" not in missing.stderr
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "tuner.json").write_text(json.dumps({"space": str(space), "settings": {"metric": "val_loss"},
                                                    "fixed": {}, "searched": [], "budget": {}}))
    other = tuner(*common, "--name", "b", "--warm-start", str(earlier))
    assert other.returncode == 2 and "searched val_loss, this search val_acc" in other.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before the run folder
