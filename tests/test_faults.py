"""Trial-level faults injected into real runs: crashed and killed trials, damaged checkpoints, divergence,
out of memory, storage that cannot be written. Real local Ray, no mocks: the faults come from outside
the trial, through the TUNER_FAULT test hook (tuner/testing/faults.py), a real NaN loss, or the file system."""

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tuner.runs.settings import RunSettings
from tuner.search.trainable import TRAINER_STATE, resume_state
from tuner.testing.faults import parse_faults
from tuner.train import folders
from tuner.train.checkpoint import CHECKSUM_SUFFIX, CorruptCheckpoint, load_torch, save_torch
from tuner.train.demo_data import write_demo_data
from tuner.train.model import CHECKPOINT_FORMAT

# One trial per fault, fixed by START in this order; each fault picks its trial by lr_head.
SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16, "feature_cache": False,
            "trials": 5, "max_epochs": 3, "grace_period": 3, "max_concurrent": 2, "max_failures": 1}

def space(trial):
    trial.suggest_categorical("optimizer", ["adamw", "sgd"])
    trial.suggest_float("lr_head", 1e-4, 1e6, log=True)
    trial.suggest_int("unfreeze_depth", 0, 1)

START = [
    {"optimizer": "adamw", "lr_head": 0.001, "unfreeze_depth": 0},  # killed once in epoch 2
    {"optimizer": "adamw", "lr_head": 0.002, "unfreeze_depth": 0},  # raises in epoch 2, also when retried
    {"optimizer": "sgd", "lr_head": 1e6, "unfreeze_depth": 1},      # a real NaN loss in epoch 1
    {"optimizer": "adamw", "lr_head": 0.003, "unfreeze_depth": 0},  # out of memory, also when retried
    {"optimizer": "adamw", "lr_head": 0.004, "unfreeze_depth": 0},  # latest checkpoint damaged, then killed
]
"""
FAULTS = ";".join([
    "kill@epoch=2,step=1,lr_head=0.001",
    "raise@epoch=2,step=1,times=2,lr_head=0.002",  # max_failures 1: the second failure is final
    "oom@epoch=1,times=2,lr_head=0.003",
    "corrupt@epoch=3,lr_head=0.004",
])
KILLED, RAISED, DIVERGED, OOM, CORRUPTED = 0.001, 0.002, 1e6, 0.003, 0.004


def tuner_command(*args):
    return [sys.executable, "-m", "tuner", *args]




@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_demo_data(root / "data", train_per_class=4, val_per_class=2, test_per_class=0)  # 2 steps an epoch
    return root


@pytest.fixture(scope="module")
def faulted(root):
    """One search whose five trials each meet one fault."""
    (root / "space.py").write_text(textwrap.dedent(SPACE))
    (root / "markers").mkdir()
    env = {**os.environ, "TUNER_FAULT": FAULTS, "TUNER_FAULT_DIR": str(root / "markers")}
    result = subprocess.run(
        # Every trial keeps its checkpoints: the export test falls back from one trial's to another's.
        tuner_command("search", "--space", str(root / "space.py"), "--data", str(root / "data"),
                      "--storage", str(root / "runs"), "--name", "faults", "--keep-checkpoints", "all"),
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = root / "runs" / "faults"
    trials = {row["lr_head"]: row for row in pq.read_table(run / "trials.parquet").to_pylist()}
    assert sorted(trials) == sorted([KILLED, RAISED, DIVERGED, OOM, CORRUPTED])
    return run, trials, result.stdout


def reported(run, row) -> list[dict]:
    """Every result the trial reported, retries included, as Ray wrote them (result.json)."""
    lines = (run / f"trial_{row['trial_id']}" / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def epochs_table(run, row) -> list[dict]:
    return [r for r in pq.read_table(run / "epochs.parquet").to_pylist() if r["trial_id"] == row["trial_id"]]


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_last_checkpoint(faulted):
    run, trials, _ = faulted
    row = trials[KILLED]
    assert row["status"] == "completed" and row["epochs_run"] == 3 and row["error"] is None
    results = reported(run, row)
    # Epoch 2 was cut short by SIGKILL; the restarted process went on from epoch 1's checkpoint.
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert results[0]["pid"] != results[1]["pid"] == results[2]["pid"]
    assert [r["epoch"] for r in epochs_table(run, row)] == [1, 2, 3]
    assert (run.parent.parent / "markers" / "fault0.0").read_text().strip() == row["trial_id"]


@pytest.mark.slow
def test_a_trial_failing_more_than_max_failures_is_errored_and_the_others_go_on(faulted):
    run, trials, output = faulted
    row = trials[RAISED]
    assert row["status"] == "errored"
    assert row["error"] == "injected fault (TUNER_FAULT) at epoch 2, step 1"
    # Failed in epoch 2, restarted once from epoch 1's checkpoint (max_failures 1), failed there again.
    assert [r["epoch"] for r in reported(run, row)] == [1] and row["epochs_run"] == 1
    assert {p.name for p in (run.parent.parent / "markers").glob("fault1.*")} == {"fault1.0", "fault1.1"}
    assert trials[KILLED]["status"] == trials[CORRUPTED]["status"] == "completed"
    assert f"trial {row['number']} ({row['trial_id']}) errored: injected fault" in output
    assert (run / "best" / "model.pt").is_file()


@pytest.mark.slow
def test_a_nan_loss_ends_the_trial_as_diverged_without_retries(faulted):
    run, trials, output = faulted
    row = trials[DIVERGED]
    last = row["epochs_run"]  # the epoch whose loss became NaN (sgd at lr 1e6: the first or second)
    assert row["status"] == "diverged" and not row["stopped_early"] and last in (1, 2)
    assert row["error"] == f"training diverged in epoch {last}: loss is nan; lower the learning rates"
    assert row["best_epoch"] is None or row["best_epoch"] < last  # a NaN epoch is never a trial's best
    results = reported(run, row)
    assert [r["epoch"] for r in results] == list(range(1, last + 1))  # reported once, never retried
    assert [r["diverged"] for r in results] == [False] * (last - 1) + [True]
    for checkpoint in (run / f"trial_{row['trial_id']}").glob("checkpoint_*"):  # no checkpoint of NaN weights
        state = load_torch(checkpoint / TRAINER_STATE)
        assert state["epoch"] < last and all(t.isfinite().all() for t in state["model"].values())
    epoch = epochs_table(run, row)[-1]
    assert epoch["diverged"] is True and epoch["train_loss"] != epoch["train_loss"]
    assert str(pq.read_schema(run / "epochs.parquet").field("unfrozen_stages").type) == "int64"
    assert all(r["diverged"] is False for r in epochs_table(run, trials[KILLED]))
    assert "1 diverged" in output and f"trial {row['number']} ({row['trial_id']}) diverged: training diverged" in output


@pytest.mark.slow
def test_out_of_memory_fails_the_trial_naming_batch_and_image_size(faulted):
    run, trials, _ = faulted
    row = trials[OOM]
    message = "out of memory at batch_size=16, image_size=32 on cpu; lower batch_size or image_size"
    assert row["status"] == "errored" and row["error"] == message and row["epochs_run"] == 0
    assert message in (run / f"trial_{row['trial_id']}" / "error.txt").read_text()


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_skipped_when_the_trial_resumes(faulted):
    run, trials, output = faulted
    row = trials[CORRUPTED]
    assert row["status"] == "completed" and row["epochs_run"] == 3
    # Epoch 2's checkpoint was damaged and the process killed in epoch 3. The restart found the damage
    # and went back to epoch 1's checkpoint when Ray had kept it (the better one), else to scratch.
    results = reported(run, row)
    (restart,) = [i for i, r in enumerate(results) if r.get("warning")]
    warning = results[restart]["warning"]
    assert "checkpoint_000001/trainer.pt is damaged (its sha256 does not match trainer.pt.sha256)" in warning
    resumed_from = 1 if "checkpoint_000000 (epoch 1)" in warning else 0
    assert resumed_from or "starting the trial from scratch" in warning
    assert [r["epoch"] for r in results] == [1, 2, *range(resumed_from + 1, 4)]
    table = epochs_table(run, row)  # an epoch trained twice keeps its last report
    assert [r["epoch"] for r in table] == [1, 2, 3] and table[resumed_from]["warning"] == warning
    # In the search's summary, under the trial's one name.
    assert row["warning"] == warning and f"trial {row['number']} ({row['trial_id']}) {warning}" in output


@pytest.mark.slow
def test_export_skips_a_damaged_best_checkpoint_for_the_next_best(faulted, root, tmp_path, capsys):
    from ray.tune import ExperimentAnalysis, ResultGrid

    from tuner.search.results import export_best, ranked_checkpoints

    run, _, _ = faulted
    copy = tmp_path / "faults"
    shutil.copytree(run, copy, copy_function=os.link)  # hard links: damage by replacing, never in place
    grid = ResultGrid(ExperimentAnalysis(str(copy)))
    (best, best_metrics), (_, second_metrics), *_ = ranked_checkpoints(grid, "val_acc", "max")
    damaged = Path(best.path) / TRAINER_STATE
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0xFF
    damaged.unlink()
    damaged.write_bytes(content)

    payload = export_best(grid, tmp_path / "out", RunSettings(selection="highest"), folders.load_splits(root / "data"))
    assert f"warning: checkpoint {damaged} is damaged" in capsys.readouterr().err
    assert (payload["metrics"]["trial_id"], payload["epoch"]) == (second_metrics["trial_id"], second_metrics["epoch"])
    delivered = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())
    assert delivered["epoch"] == second_metrics["epoch"]
    assert delivered["selection"] == (f"the checkpoint of trial {best_metrics['number']} ({best_metrics['trial_id']}) "
                                      f"is damaged: the next by val_acc")


# --- damaged checkpoints, without Ray running ---

def _trial_folder(tmp_path, epochs: int):
    """A trial folder as Ray leaves it: checkpoint_00000N/trainer.pt (+ sha256) for epochs 1..`epochs`."""
    from ray.tune import Checkpoint

    for epoch in range(1, epochs + 1):
        save_torch({"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": {"w": torch.full((1000,), epoch)}},
                   tmp_path / f"checkpoint_{epoch - 1:06d}" / TRAINER_STATE, checksum=True)
    return [Checkpoint(str(tmp_path / f"checkpoint_{epoch - 1:06d}")) for epoch in range(1, epochs + 1)]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_falls_back_to_the_previous_checkpoint_then_to_scratch(tmp_path, capsys):
    first, second = _trial_folder(tmp_path, 2)
    state, warning = resume_state(second)
    assert state["epoch"] == 2 and warning is None

    _truncate(tmp_path / "checkpoint_000001" / TRAINER_STATE)
    state, warning = resume_state(second)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.full((1000,), 1))
    assert f"checkpoint {second.path}/{TRAINER_STATE} is damaged" in warning
    assert warning.endswith(f"resuming from {first.path} (epoch 1)") and warning in capsys.readouterr().err

    (tmp_path / "checkpoint_000000" / TRAINER_STATE).unlink()  # gone: as damaged as a bad file
    state, warning = resume_state(second)
    assert state is None and warning.endswith("starting the trial from scratch")


def test_a_flipped_byte_is_caught_by_the_checksum_not_loaded(tmp_path):
    _trial_folder(tmp_path, 1)
    path = tmp_path / "checkpoint_000000" / TRAINER_STATE
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF  # inside the tensor's bytes: torch.load alone would accept it
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpoint, match="sha256 does not match trainer.pt.sha256"):
        load_torch(path)
    (tmp_path / "checkpoint_000000" / (TRAINER_STATE + CHECKSUM_SUFFIX)).unlink()
    _truncate(path)  # without a sidecar the load test still catches a truncated file
    with pytest.raises(CorruptCheckpoint, match="is damaged"):
        load_torch(path)


def test_the_fault_hook_is_inert_without_the_variable_and_strict_with_it(monkeypatch):
    from tuner.testing.faults import fault_hook

    monkeypatch.delenv("TUNER_FAULT", raising=False)
    assert fault_hook({"lr_head": 0.001}) is None
    assert parse_faults("kill@epoch=2,step=1,lr_head=0.001") == [
        {"kind": "kill", "when": (2, 1), "times": 1, "after": 0, "where": {"lr_head": "0.001"}}]
    assert parse_faults("crash@point=export,after=2") == [
        {"kind": "crash", "when": ("point", "export"), "times": 1, "after": 2, "where": {}}]
    with pytest.raises(ValueError, match="KIND one of raise, kill, oom, corrupt, crash"):
        parse_faults("explode@epoch=1")
    with pytest.raises(ValueError, match="P one of checkpoint, export"):
        parse_faults("crash@point=lunch")


# --- storage that cannot be written ---

@pytest.fixture
def blocked(tmp_path):
    """A path under which nothing can be created: a read-only folder; as root, where chmod does not
    stop writes, a regular file standing where a folder is expected (which stops root too)."""
    path = tmp_path / "blocked"
    if os.geteuid() == 0:
        path.write_text("a file, not a folder\n")
        yield path
        return
    path.mkdir()
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


TRAIN = ("--set", "model=resnet18", "--set", "weights=none", "--set", "image_size=32", "--set", "batch_size=16",
         "--set", "unfreeze_depth=0", "--set", "feature_cache=false")


def _one_line_error(result, command: str, fragment: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tuner {command}: error:") and fragment in lines[0], result.stderr


def test_train_into_an_unwritable_folder_is_a_one_line_error(root, blocked):
    result = subprocess.run(tuner_command("train", "--data", str(root / "data"), "--out", str(blocked / "run"),
                                          "--set", "epochs=1", *TRAIN), capture_output=True, text=True, timeout=300)
    _one_line_error(result, "train", str(blocked / "run"))


def _limit_file_size(limit: int):
    """A preexec_fn under which writes past `limit` bytes fail (EFBIG), for root too."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_train_whose_writes_fail_midway_keeps_the_earlier_run_intact(root, tmp_path):
    out = tmp_path / "run"
    first = subprocess.run(tuner_command("train", "--data", str(root / "data"), "--out", str(out), "--set", "epochs=1",
                                         *TRAIN), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # Resume for a second epoch on storage that fails halfway through writing its checkpoint (a lean one:
    # the head's tensors and the optimizer state); every other file it writes is smaller than that.
    limit = (out / "checkpoint.pt").stat().st_size // 2
    result = subprocess.run(tuner_command("train", "--data", str(root / "data"), "--out", str(out), "--resume",
                                          "--set", "epochs=2", *TRAIN),
                            capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(limit))
    _one_line_error(result, "train", f"cannot write {out}")
    assert "File too large" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # no half file, nothing lost


@pytest.mark.slow
def test_search_into_unwritable_storage_is_a_one_line_error_and_earlier_runs_stay(faulted, root):
    run, _, _ = faulted
    storage = run.parent
    before = (run / "trials.parquet").read_bytes()
    if os.geteuid() == 0:  # chmod does not stop root: a file stands where the storage folder should be
        target = storage / "not-a-folder"
        target.write_text("a file\n")
    else:
        target = storage
        storage.chmod(0o555)
    try:
        result = subprocess.run(tuner_command("search", "--space", str(root / "space.py"), "--data", str(root / "data"),
                                              "--storage", str(target), "--name", "again"),
                                capture_output=True, text=True, timeout=300)
    finally:
        storage.chmod(0o755)
    _one_line_error(result, "search", str(target / "again"))
    assert (run / "trials.parquet").read_bytes() == before


@pytest.mark.slow
def test_resuming_a_search_with_errored_trials_continues_them_from_their_checkpoints(faulted, tmp_path):
    """`tuner resume` goes on with each errored trial from its last checkpoint, under its own id (the faults
    have fired their times: the trials run clean now), and the study agrees with the table again."""
    run, trials, _ = faulted
    copy = tmp_path / "faults"
    shutil.copytree(run, copy)
    result = subprocess.run(tuner_command("resume", str(copy)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["trial_id"]: row for row in pq.read_table(copy / "trials.parquet").to_pylist()}
    assert set(rows) == {row["trial_id"] for row in trials.values()}  # no trial under a new id
    assert len(list(copy.glob("trial_*"))) == len(rows)
    for row in trials.values():
        if row["status"] == "errored":
            assert rows[row["trial_id"]]["status"] == "completed"
            epochs = [r["epoch"] for r in reported(copy, row)]
            assert epochs[-1] == 3 and epochs.count(1) == 1  # went on from a checkpoint: epoch 1 ran once
    assert "optuna.db agrees with trials.parquet" in subprocess.run(
        tuner_command("report", str(copy)), capture_output=True, text=True, timeout=300).stdout
    assert (copy / "best" / "model.pt").is_file()
