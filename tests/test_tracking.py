"""Tracking a real search in MLflow (a SQLite store) and W&B (offline mode), read back with MLflow's client and
from W&B's offline run files; the trials' own log files, and `tuner report`'s links to an errored trial's logs.

One small search (resnet18 at 32 px, 2 trials of 2 epochs) runs with --mlflow and --wandb; the second trial
raises in its second epoch (the TUNER_FAULT hook) and, with --max-failures 0, ends errored.
"""

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow  # both in the [dev] extra: these tests never skip for want of them
import pyarrow.parquet as pq
import pytest
from wandb.proto import wandb_internal_pb2 as wandb_pb

from tuner.train.demo_data import write_demo_data

pytestmark = pytest.mark.slow

NAME, PROJECT = "tracked", "tuner-tests"
SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16, "trials": 2,
            "max_epochs": 2, "grace_period": 2, "max_concurrent": 2, "max_failures": 0}

def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
    trial.suggest_float("aug_strength", 0.0, 0.5)

START = [{"lr_head": 0.001, "aug_strength": 0.1}, {"lr_head": 0.002, "aug_strength": 0.2}]
"""
ERRORED_LR = 0.002
FAULT = f"raise@epoch=2,lr_head={ERRORED_LR}"  # once: the trial restarted by `tuner resume` runs clean


TUNER = (sys.executable, "-m", "tuner")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    write_demo_data(root / "data", train_per_class=4, val_per_class=2, test_per_class=0)  # 2 steps an epoch
    (root / "space.py").write_text(textwrap.dedent(SPACE))
    (root / "markers").mkdir()
    return root


def tracking_env(root: Path) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "TUNER_FAULT": FAULT, "TUNER_FAULT_DIR": str(root / "markers")}


@pytest.fixture(scope="module")
def tracked(root):
    """(RUN, MLflow URI, trials by lr_head, stdout) of the search, run from another folder than the store's."""
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir()
    (root / "cwd").mkdir()
    result = subprocess.run(
        (*TUNER, "search", "--space", str(root / "space.py"), "--data", str(root / "data"),
                      "--storage", str(root / "runs"), "--name", NAME, "--mlflow", uri, "--wandb", PROJECT),
        capture_output=True, text=True, timeout=900, env=tracking_env(root), cwd=root / "cwd")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = root / "runs" / NAME
    trials = {row["lr_head"]: row for row in pq.read_table(run / "trials.parquet").to_pylist()}
    assert trials[ERRORED_LR]["status"] == "errored" and trials[0.001]["status"] == "completed"
    return run, uri, trials, result.stdout


def val_acc_by_step(run: Path, trial_id: str) -> dict[int, float]:
    return {row["budget_steps"]: row["val_acc"] for row in pq.read_table(run / "epochs.parquet").to_pylist()
            if row["trial_id"] == trial_id}


def mlflow_runs(uri: str) -> dict[str, "mlflow.entities.Run"]:
    """The experiment's runs by their trial_id tag."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len({r.data.tags["trial_id"] for r in runs}), "one MLflow run per trial"
    return {r.data.tags["trial_id"]: r for r in runs}


def test_mlflow_holds_every_trials_hyperparameters_and_every_rounds_metrics(tracked):
    run, uri, trials, _ = tracked
    runs = mlflow_runs(uri)
    assert set(runs) == {row["trial_id"] for row in trials.values()}
    client = mlflow.MlflowClient(tracking_uri=uri)
    for row in trials.values():
        logged = runs[row["trial_id"]]
        assert logged.info.run_name == f"trial_{row['trial_id']}"
        params = logged.data.params
        assert float(params["lr_head"]) == row["lr_head"] and float(params["aug_strength"]) == row["aug_strength"]
        assert params["model"] == "resnet18" and params["image_size"] == "32"  # the fixed ones too
        history = {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "val_acc")}
        assert history == pytest.approx(val_acc_by_step(run, row["trial_id"]))  # by budget step, as the tables
        assert {"val_loss", "train_loss", "budget_steps"} <= set(logged.data.metrics)
    assert runs[trials[ERRORED_LR]["trial_id"]].info.status == "FAILED"
    assert runs[trials[0.001]["trial_id"]].info.status == "FINISHED"


def test_the_best_model_is_an_artifact_of_the_best_trials_mlflow_run(tracked, root, tmp_path):
    run, uri, trials, output = tracked
    best = json.loads((run / "best" / "metrics.json").read_text())["trial_id"]
    logged = mlflow_runs(uri)[best]
    assert logged.data.tags["best"] == "true" and f"logged as artifact 'best' of run {logged.info.run_id}" in output
    # Beside the SQLite file, not in the folder the search ran from.
    assert logged.info.artifact_uri.startswith(str(root / "mlflow" / "mlartifacts" / NAME))
    assert not (root / "cwd" / "mlruns").exists()
    copy = Path(mlflow.artifacts.download_artifacts(run_id=logged.info.run_id, artifact_path="best",
                                                    tracking_uri=uri, dst_path=str(tmp_path)))
    assert {p.name for p in copy.iterdir()} == {p.name for p in (run / "best").iterdir()}
    assert (copy / "model.pt").read_bytes() == (run / "best" / "model.pt").read_bytes()


def wandb_records(path: Path):
    """The records of a W&B run file (`run-ID.wandb`): W&B's 7-byte header, then LevelDB-log records of 32 KiB
    blocks (a 7-byte header each: crc32, length, type FULL/FIRST/MIDDLE/LAST), each a protobuf `Record`."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zeros to the end of the block
            pos += block - pos % block
            continue
        parts, pos = parts + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(run: Path, trial_id: str) -> tuple[dict, dict, list[dict]]:
    """(run record fields, config, history rows) of a trial's offline W&B runs, in the order written."""
    files = sorted((run / f"trial_{trial_id}" / "wandb").glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))
    assert files, f"no offline W&B run in trial_{trial_id}/wandb"
    info, config, history = {}, {}, []
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info = {"id": record.run.run_id, "project": record.run.project, "group": record.run.run_group}
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return info, config, history


def test_wandb_offline_files_hold_every_trials_hyperparameters_and_metrics(tracked):
    run, _, trials, _ = tracked
    for row in trials.values():
        info, config, history = wandb_run(run, row["trial_id"])
        assert info == {"id": row["trial_id"], "project": PROJECT, "group": NAME}
        assert config["lr_head"] == row["lr_head"] and config["aug_strength"] == row["aug_strength"]
        assert config["model"] == "resnet18"
        logged = {h["budget_steps"]: h["val_acc"] for h in history}
        assert logged == pytest.approx(val_acc_by_step(run, row["trial_id"]))
        assert all({"val_loss", "train_loss", "epoch"} <= set(h) for h in history)


def test_every_trial_keeps_its_output_in_its_folder(tracked):
    run, _, trials, _ = tracked
    for row in trials.values():
        folder = run / f"trial_{row['trial_id']}"
        assert (folder / "stdout.log").is_file() and (folder / "stderr.log").is_file()
        # Ray's trial-side log lines go to stderr.log: here, each round's checkpoint as it is written.
        assert "Checkpoint successfully created at" in (folder / "stderr.log").read_text()


def test_the_report_links_an_errored_trials_logs(tracked):
    run, _, trials, _ = tracked
    result = subprocess.run((*TUNER, "report", str(run)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (run / "report" / "index.html").read_text()
    section = re.search(r'<ul id="error-logs">(.*?)</ul>', page).group(1)
    errored, completed = trials[ERRORED_LR]["trial_id"], trials[0.001]["trial_id"]
    links = re.findall(r'href="([^"]+)"', section)
    assert sorted(links) == sorted(f"../trial_{errored}/{name}" for name in ("error.txt", "stdout.log", "stderr.log"))
    assert all((run / "report" / link).resolve().is_file() for link in links)
    assert "injected fault" in (run / f"trial_{errored}" / "error.txt").read_text()
    assert completed not in section  # only errored trials are linked


def test_a_trial_resumed_after_a_crash_goes_on_in_its_own_mlflow_and_wandb_runs(root):
    """The whole search SIGKILLed inside a trial's second epoch (the `crash` fault), then `tuner resume`: the
    trial continues under its id, and logs on to the MLflow run and the W&B run it had."""
    uri = f"sqlite:///{root / 'mlflow' / 'crashed.db'}"
    markers = root / "crash-markers"
    markers.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "TUNER_FAULT": "crash@epoch=2,step=1",
           "TUNER_FAULT_DIR": str(markers)}
    process = subprocess.Popen(  # a process group of its own, which the crash fault kills whole
        (*TUNER, "search", "--space", str(root / "space.py"), "--data", str(root / "data"), "--trials", "1",
                      "--storage", str(root / "runs"), "--name", "crashed", "--mlflow", uri, "--wandb", PROJECT),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    (markers / "search.pgid").write_text(str(process.pid))
    try:
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    assert process.returncode == -9, out[-2000:] + err[-2000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("crashed")
    (before,) = client.search_runs([experiment.experiment_id])
    assert {m.step for m in client.get_metric_history(before.info.run_id, "val_acc")} <= {2}  # no epoch 2 yet

    run = root / "runs" / "crashed"
    result = subprocess.run((*TUNER, "resume", str(run)), capture_output=True, text=True, timeout=900,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (row,) = pq.read_table(run / "trials.parquet").to_pylist()
    assert row["status"] == "completed" and row["trial_id"] == before.data.tags["trial_id"]
    (after,) = client.search_runs([experiment.experiment_id])
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(after.info.run_id, "val_acc")}
    assert history == pytest.approx(val_acc_by_step(run, row["trial_id"])) and set(history) == {2, 4}
    assert after.data.tags["best"] == "true"  # the best model, logged when the resumed search ended
    # W&B offline: a run file from before the crash and one from the resume, both of the trial's W&B run.
    files = list((run / f"trial_{row['trial_id']}" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and {f.name for f in files} == {f"run-{row['trial_id']}.wandb"}
    info, _, history = wandb_run(run, row["trial_id"])
    assert info["id"] == row["trial_id"] and history[-1]["budget_steps"] == 4


# Each stops before Ray starts: a one-line error with exit code 2, and no run folder.
@pytest.mark.parametrize("flags, hide, unset, fragment", [
    (["--mlflow", "sqlite:///store.db"], "mlflow", (),
     "--mlflow needs the mlflow package, which is not installed here: pip install 'tuner[mlflow]'"),
    (["--wandb", PROJECT], "wandb", (),
     "--wandb needs the wandb package, which is not installed here: pip install 'tuner[wandb]'"),
    (["--mlflow", "nosuch://host/store"], None, (),
     "--mlflow 'nosuch://host/store': MLflow cannot use it ("),
    (["--wandb", PROJECT], None, ("WANDB_MODE", "WANDB_API_KEY"),
     "set WANDB_MODE=offline to keep the runs on this machine"),
])
def test_tracking_that_cannot_work_is_a_one_line_error_before_ray_starts(root, tmp_path, flags, hide, unset, fragment):
    # A package is hidden the way a missing one behaves: its import raises ImportError.
    code = (f"import sys; sys.modules[{hide!r}] = None; " if hide else "import sys; ") + \
        "from tuner.__main__ import main; sys.exit(main(sys.argv[1:]))"
    environ = {**os.environ, "HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc")}  # no W&B login here
    for key in unset:
        environ.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-c", code, "search", "--space", str(root / "space.py"), "--data", str(root / "data"),
         "--storage", str(tmp_path / "runs"), "--name", "refused", *flags],
        capture_output=True, text=True, timeout=300, env=environ, cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tuner search: error: ") and fragment in lines[0], lines
    assert not (tmp_path / "runs" / "refused").exists() and "Traceback" not in result.stderr
