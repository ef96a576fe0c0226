"""End-to-end searches on a real local Ray with Optuna and ASHA (small data, resnet18 at 32 px)."""

import itertools
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import torch

from tuner.runs.selection import load_candidates, select
from tuner.search.results import evaluate_payload
from tuner.search.trainable import PREDICTIONS
from tuner.train import cache, folders, loading
from tuner.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def setup(search_root):
    return search_root


def tuner_command(*args):
    return [sys.executable, "-m", "tuner", *args]


@pytest.fixture(scope="module")
def finished(finished_search):
    return finished_search


def test_every_trial_has_a_row_with_its_hyperparameters(finished):
    run, _ = finished
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert len(trials) == 6
    assert {"trial_id", "status", "epochs_run", "steps", "budget_steps", "stopped_early", "val_acc", "val_loss",
            "best_step", "best_epoch", "seconds", "unfreeze_depth", "lr_head", "lr_layer4", "lr_layer3",
            "aug_strength"} <= set(trials[0])
    for row in trials:  # a frozen stage has no learning rate
        assert (row["lr_layer4"] is None) == (row["unfreeze_depth"] < 1)
        assert (row["lr_layer3"] is None) == (row["unfreeze_depth"] < 2)


def test_asha_stops_weak_trials_early(finished):
    run, output = finished
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert sum(row["budget_steps"] for row in trials) < 6 * 15
    assert any(row["stopped_early"] for row in trials)
    assert "stopped early by ASHA" in output
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    assert len(epochs) == sum(row["budget_steps"] // 5 for row in trials)  # a report every 5 budget steps
    assert "ASHA reduction 2 on each trial's best val_acc so far" in output
    for trial_id in {e["trial_id"] for e in epochs}:  # what ASHA compares: the best round so far, not the last
        rows = sorted((e for e in epochs if e["trial_id"] == trial_id), key=lambda e: e["budget_steps"])
        assert [e["best_val_acc"] for e in rows] == list(itertools.accumulate((e["val_acc"] for e in rows), max))


def test_budgets_are_steps_recorded_in_both_tables(finished):
    """160 images of batch 32: a 15-step budget is 3 rounds of one 5-step epoch; ASHA decides at 5 and 10.
    A head-only trial (unfreeze_depth 0) takes 10 optimizer steps a budget step: rounds of 10 epochs."""
    run, output = finished
    record = json.loads((run / "tuner.json").read_text())
    assert record["budget"] == {"steps": 15, "round_steps": 5, "grace_steps": 5, "reason": "--max-steps"}
    assert "budget 15 steps a trial (--max-steps)" in output
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    for row in trials:
        per_budget_step = 10 if row["unfreeze_depth"] == 0 else 1
        reports = sorted((e for e in epochs if e["trial_id"] == row["trial_id"]), key=lambda e: e["step"])
        assert [e["budget_steps"] for e in reports] == [5 * (i + 1) for i in range(len(reports))]
        assert [e["step"] for e in reports] == [5 * per_budget_step * (i + 1) for i in range(len(reports))]
        assert row["steps"] == reports[-1]["step"] == row["budget_steps"] * per_budget_step
        assert row["epochs_run"] == row["steps"] // 5
        assert row["status"] == ("completed" if row["budget_steps"] == 15 else "stopped_early")
        best = max(reports, key=lambda e: (e["val_acc"], e["step"]))  # ties: the later round, as Ray keeps
        assert (row["best_step"], row["val_acc"]) == (best["step"], best["val_acc"])
    assert {row["budget_steps"] for row in trials} <= {5, 10, 15} and 15 in {row["budget_steps"] for row in trials}


def test_the_record_holds_each_searched_distribution_and_ashas_rungs(finished):
    """What the report reads instead of guessing: the space's distributions (conftest.SEARCH_SPACE) and the
    budget steps at which ASHA compares trials (grace 5, factor 2, budget 15)."""
    run, _ = finished
    record = json.loads((run / "tuner.json").read_text())
    assert record["rungs"] == [5, 10]
    declared = {item["name"]: item for item in record["distributions"]}
    assert list(declared) == record["searched"]
    rate = {"kind": "float", "low": 1e-5, "high": 1e-3, "log": True, "step": None, "choices": None}
    assert declared == {
        "unfreeze_depth": {"name": "unfreeze_depth", "kind": "int", "low": 0, "high": 2, "log": False, "step": 1,
                           "choices": None},
        "lr_head": {"name": "lr_head", "kind": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": None,
                    "choices": None},
        "lr_layer4": {"name": "lr_layer4", **rate},
        "lr_layer3": {"name": "lr_layer3", **rate},
        "aug_strength": {"name": "aug_strength", "kind": "float", "low": 0.0, "high": 0.5, "log": False,
                         "step": None, "choices": None},
    }


def test_trials_reuse_worker_processes_and_share_the_node_cache(finished, node_cache, setup):
    run, _ = finished
    pids = set()
    for result in run.glob("trial_*/result.json"):
        pids |= {json.loads(line)["pid"] for line in result.read_text().splitlines() if line.strip()}
    assert len(pids) <= 2  # two trials at a time: two worker processes ran all six trials
    # The trials read the splits from the node's decoded-image cache (32 px crops: shorter side 37).
    splits = folders.load_splits(setup / "data")
    for samples in (splits.train, splits.val):
        key = cache.key_of(cache.IMAGES_FORMAT, loading.resize_size(32), cache.file_identity([p for p, _ in samples]))
        assert (node_cache / "images" / key / "pixels.u8").is_file()


def test_best_is_the_best_epoch_and_reproduces_its_val_acc(finished, setup):
    run, _ = finished
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    # best/ is the delivered trial's best epoch (the selection rule; tests/test_selection.py plants its cases).
    delivered = [row for row in trials if row["delivered"]]
    assert [row["trial_id"] for row in delivered] == [metrics["trial_id"]]
    assert metrics["val_acc"] == delivered[0]["val_acc"] and metrics["epoch"] == delivered[0]["best_epoch"]
    assert {"epoch", "weights", "test_acc"} <= set(metrics)
    payload = load_checkpoint(run / "best")
    splits = folders.load_splits(setup / "data")
    assert evaluate_payload(payload, splits, "val")["val_acc"] == pytest.approx(metrics["val_acc"])


def test_best_checkpoints_hold_val_predictions_and_the_summary_names_the_delivered_trial(finished, setup):
    run, output = finished
    val = folders.load_splits(setup / "data").val
    metrics = json.loads((run / "best" / "metrics.json").read_text())
    trials = {row["trial_id"]: row for row in pq.read_table(run / "trials.parquet").to_pylist()}
    kept = list(run.glob("trial_*/checkpoint_*"))
    assert kept
    for folder in kept:  # the delivered trial's (keep_checkpoints best): each image's prediction, in order
        with np.load(folder / PREDICTIONS, allow_pickle=False) as saved:
            assert saved["label"].tolist() == [label for _, label in val]
            assert saved["predicted"].shape == saved["true_prob"].shape == (len(val),)
    # The run's record of the compared trials: every trial with a checkpoint, over every validation image.
    candidates = load_candidates(run / "val_predictions.npz")
    compared = {trial_id for trial_id, row in trials.items() if row["within_noise"] is not None}
    assert {c.trial_id for c in candidates} == compared and len(compared) >= 2
    for candidate in candidates:
        assert candidate.correct.shape == (len(val),)
        assert candidate.accuracy == pytest.approx(trials[candidate.trial_id]["val_acc"])
    selection = select(candidates)
    assert selection.delivered == metrics["trial_id"] and selection.reason == metrics["selection"]
    for c in selection.comparisons:  # the table holds each comparison, Holm's adjustment (which decides) included
        row = trials[c.trial_id]
        assert (row["mcnemar_p"], row["holm_p"], row["within_noise"]) == (c.mcnemar_p, c.holm_p, c.within_noise)
    number = trials[metrics["trial_id"]]["number"]  # the trial's one name, as its progress lines gave it
    assert f"delivered: trial {number} ({metrics['trial_id']}) epoch {metrics['epoch']}" in output
    assert f"trial {number:>3} ({metrics['trial_id']}) started" in output
    assert f"  why: {metrics['selection']}" in output
    if len(selection.within_noise()) > 1:
        assert "within noise of the best" in output
        for c in selection.within_noise():
            name = f"trial {trials[c.trial_id]['number']} ({c.trial_id})"  # 6 trials: one width
            assert f"  {name}  {c.accuracy:.4f}  p {c.mcnemar_p:.3f}  Holm p {c.holm_p:.3f}" in output


def test_the_compute_choice_is_printed_recorded_and_used_by_the_trials(finished):
    run, output = finished
    record = json.loads((run / "tuner.json").read_text())["compute"]
    chosen = f"{record['precision']}/{record['memory_format']}"
    assert record["reason"] in output and f"compute: {record['precision']}, {record['memory_format']}" in output
    assert chosen == min(record["seconds"], key=record["seconds"].get)  # measured: the fastest won
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    # Trials of the driver's configuration (unfreeze_depth 2 by default) read its answer from the node cache.
    same = {row["trial_id"] for row in trials if row["unfreeze_depth"] == 2}
    assert all(e["compute"] == chosen for e in epochs if e["trial_id"] in same)
    assert json.loads((run / "best" / "metrics.json").read_text())["compute"] in {e["compute"] for e in epochs}


def test_only_the_best_trial_keeps_its_checkpoints_when_the_search_ends(finished, tmp_path):
    run, output = finished
    best = json.loads((run / "best" / "metrics.json").read_text())["trial_id"]
    kept = {p.parent.name for p in run.glob("trial_*/checkpoint_*")}
    assert kept == {f"trial_{best}"}, kept
    assert "finished trials other than the best" in output and "--keep-checkpoints all keeps them" in output
    # Each trial that ended below the best lost its weights then (search/pruning.py), not at the end.
    assert re.search(r"during the search, the weights of [1-9]\d* checkpoints .* \([1-9][\d.]* MiB\)", output)
    # A finished search still resumes (nothing to run) and still exports the same best/.
    copy = tmp_path / "full"
    shutil.copytree(run, copy)
    result = subprocess.run(tuner_command("resume", str(copy)), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    best_metrics = [json.loads((folder / "best" / "metrics.json").read_text()) for folder in (copy, run)]
    assert best_metrics[0] == best_metrics[1]
    rows = [sorted(pq.read_table(folder / "trials.parquet").to_pylist(), key=lambda r: r["trial_id"])
            for folder in (copy, run)]
    assert rows[0] == rows[1]  # the same trials, nothing re-run (Ray may list them in another order)


def test_tensorboard_event_files_exist_for_every_trial(finished):
    run, _ = finished
    trial_dirs = [p for p in run.iterdir() if p.name.startswith("trial_")]
    assert len(trial_dirs) == 6
    assert all(list(d.glob("events.out.tfevents.*")) for d in trial_dirs)


def _summary_plugins(event_file) -> set[str]:
    """Names of the TensorBoard plugins (e.g. hparams) in one event file, read record by record."""
    from tensorboardX.proto import event_pb2

    data, pos, plugins = event_file.read_bytes(), 0, set()
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])  # TFRecord: length, its crc, data, data crc
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        plugins |= {v.metadata.plugin_data.plugin_name for v in event.summary.value}
        pos += 12 + length + 4
    return plugins


def test_tensorboard_holds_every_trials_hyperparameters(finished):
    run, _ = finished
    for trial_dir in (p for p in run.iterdir() if p.name.startswith("trial_")):
        assert "hparams" in set().union(*map(_summary_plugins, trial_dir.glob("events.out.tfevents.*")))


def test_the_optuna_study_is_stored_in_the_run_folder_and_matches_the_table(finished):
    run, _ = finished
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    trials = {row["trial_id"]: row for row in pq.read_table(run / "trials.parquet").to_pylist()}
    assert study.study_name == "full" and len(study.trials) == len(trials) == 6
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    for trial in study.trials:
        row = trials[trial.user_attrs["trial_id"]]
        reports = {e["budget_steps"]: e["val_acc"] for e in epochs if e["trial_id"] == row["trial_id"]}
        assert trial.intermediate_values == pytest.approx(reports)  # every round, at its budget step
        if row["status"] == "stopped_early":  # ASHA's decision reaches Optuna: PRUNED where it stopped
            assert trial.state == optuna.trial.TrialState.PRUNED
            last = max(trial.intermediate_values)
            assert last == row["budget_steps"] and trial.value == trial.intermediate_values[last]  # Optuna's rule
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.value == pytest.approx(row["val_acc"])  # the best round, as in the table
        assert trial.params["lr_head"] == pytest.approx(row["lr_head"])
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states


def test_progress_lines_replace_rays_log(finished):
    _, output = finished
    assert "trial   1 step     5 (epoch   1): val_acc" in output and "search best" in output
    assert "top trials by val_acc" in output and "best model:" in output


def _wait_for(process, text, timeout):
    """Read the child's output until `text` appears; returns what was read."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared:\n{seen[-3000:]}")


def test_killed_search_resumes_without_losing_or_rerunning_finished_trials(setup):
    run = setup / "runs" / "killed"
    process = subprocess.Popen(
        tuner_command("search", "--space", str(setup / "space.py"), "--data", str(setup / "data"),
                      "--storage", str(setup / "runs"), "--name", "killed", "--trials", "4",
                      "--max-concurrent", "1", "--max-epochs", "2", "--grace-period", "2", "--keep-checkpoints", "all"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        _wait_for(process, "trial 1 completed", timeout=600)
        time.sleep(3)  # let the search state (saved every 2 s) catch up with the finished trial
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray it started, as in a crash
        process.wait()
    finished_before = {p.name: (p / "progress.csv").read_text() for p in run.glob("trial_*")
                       if (p / "progress.csv").is_file() and len((p / "progress.csv").read_text().splitlines()) == 3}
    assert finished_before, "no trial had finished before the kill"

    result = subprocess.run(tuner_command("resume", str(run)), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert len(trials) == 4 and all(row["status"] == "completed" for row in trials)
    for name, progress in finished_before.items():  # finished trials were neither lost nor re-run
        assert (run / name / "progress.csv").read_text() == progress
    assert (run / "best" / "model.pt").is_file()
    assert all(list(trial.glob("checkpoint_*")) for trial in run.glob("trial_*"))  # --keep-checkpoints all


@pytest.mark.parametrize("argv, fragment", [
    (["search", "--space", "{tmp}/missing.py"], "does not exist"),
    pytest.param(["search", "--space", "{space}", "--gpus-per-trial", "1"], "GPUs",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["search", "--space", "{space}", "--grace-period", "9", "--max-epochs", "2"], "grace_period (9) must be <="),
    (["search", "--space", "{space}", "--keep-checkpoints", "some"], "keep_checkpoints 'some' is not allowed"),
    (["resume", "{tmp}"], "is not a tuner run"),
])
def test_bad_search_input_is_one_line_and_exit_code_2(setup, tmp_path, argv, fragment):
    argv = [a.format(tmp=tmp_path, space=setup / "space.py") for a in argv]
    if argv[0] == "search":
        argv += ["--data", str(setup / "data"), "--storage", str(tmp_path / "runs")]
    result = subprocess.run(tuner_command(*argv), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_summary_points_to_evaluate_only_when_the_data_has_no_test_split(finished_search, capsys):
    from tuner.runs.settings import RunSettings
    from tuner.search.results import print_summary
    from tuner.train.checkpoint import load_checkpoint

    run, output = finished_search
    assert "test_acc" in output and "tuner evaluate" not in output  # this data has test/
    record = json.loads((run / "tuner.json").read_text())
    payload = load_checkpoint(run / "best")
    payload["metrics"] = {k: v for k, v in payload["metrics"].items() if not k.startswith("test_")}  # no test/
    print_summary(pq.read_table(run / "trials.parquet").to_pylist(), payload, str(run),
                  RunSettings(**record["settings"]), record["searched"])
    assert f"tuner evaluate --model {run}/best --data HELD_OUT" in capsys.readouterr().out
