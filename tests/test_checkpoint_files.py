"""Checkpoint files (tuner/train/checkpoint.py): damaged bytes against failed reads, best/ swapped whole, and
file modes. Real files and real errors: a read of /proc/self/mem at offset 0 fails with EIO (a symlink puts
it where a checkpoint is), and TUNER_FAULT's eio and kill faults fire at the reader's and the swap's points."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tuner.testing.faults  # noqa: F401  (installs TUNER_FAULT's read and swap points)
from tuner.search.results import Delivery, export_best
from tuner.search.trainable import PREDICTIONS, TRAINER_STATE, load_predictions, resume_state, save_predictions
from tuner.train.checkpoint import (
    CheckpointReadError,
    CorruptCheckpoint,
    atomic_write,
    best_folder,
    load_checkpoint,
    load_torch,
    model_payload,
    recover_best,
    save_torch,
    write_best,
)
from tuner.train.evaluation import ImagePredictions
from tuner.train.model import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]
BEST_FILES = {"model.pt", "model.pt.sha256", "config.json", "classes.json", "metrics.json"}


def _failing_read(path: Path) -> None:
    """Put a file at `path` whose every read fails with a genuine EIO from the kernel."""
    path.unlink(missing_ok=True)
    path.symlink_to("/proc/self/mem")  # offset 0 is never mapped: read(2) says EIO


def _saved(tmp_path: Path, **kwargs) -> Path:
    path = tmp_path / "trainer.pt"
    save_torch({"format": CHECKPOINT_FORMAT, "w": torch.arange(1000)}, path, **kwargs)
    return path


# --- a damaged file against a failed read ---

def test_a_truncated_file_is_corrupt(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint {path} is damaged"):
        load_torch(path)


def test_a_file_failing_its_sidecar_is_corrupt(tmp_path):
    path = _saved(tmp_path, checksum=True)
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpoint, match="sha256 does not match trainer.pt.sha256"):
        load_torch(path)


def test_a_missing_file_and_a_refused_pickle_are_corrupt(tmp_path):
    with pytest.raises(CorruptCheckpoint, match=r"is damaged \(no such file\)"):
        load_torch(tmp_path / "gone.pt")
    path = tmp_path / "pickle.pt"
    torch.save(SimpleNamespace(a=1), path)  # a pickle of an arbitrary class: weights_only refuses it
    with pytest.raises(CorruptCheckpoint, match="not a PyTorch file of tensors and plain data"):
        load_torch(path)


def test_a_read_failing_with_eio_is_retried_then_a_read_error_not_corrupt(tmp_path):
    path = _saved(tmp_path, checksum=True)
    _failing_read(path)
    start = time.perf_counter()
    with pytest.raises(CheckpointReadError) as raised:
        load_torch(path, shown="trial_1/checkpoint_000003/trainer.pt")
    assert time.perf_counter() - start >= 0.2 + 0.5  # waited before the second and the third try
    assert not isinstance(raised.value, CorruptCheckpoint)
    message = str(raised.value)
    assert "\n" not in message and "trial_1/checkpoint_000003/trainer.pt" in message
    assert "Input/output error" in message and "3 tries" in message and "nothing was deleted" in message
    with pytest.raises(CheckpointReadError, match="Input/output error"):  # best/model.pt as predict loads it
        load_checkpoint(path)


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """Set TUNER_FAULT for this test; markers go to a folder of their own."""
    (tmp_path / "faults").mkdir()
    monkeypatch.setenv("TUNER_FAULT_DIR", str(tmp_path / "faults"))
    return lambda spec: monkeypatch.setenv("TUNER_FAULT", spec)


def test_a_read_that_fails_once_succeeds_on_the_retry(tmp_path, faults):
    path = _saved(tmp_path, checksum=True)
    faults("eio@point=read,times=1")
    assert torch.equal(load_torch(path)["w"], torch.arange(1000))
    assert sorted(p.name for p in (tmp_path / "faults").iterdir()) == ["fault0.0"]  # one failed try


def test_a_read_that_fails_every_try_is_a_read_error(tmp_path, faults):
    path = _saved(tmp_path, checksum=True)
    faults("eio@point=read,times=3")
    with pytest.raises(CheckpointReadError, match=r"injected by TUNER_FAULT.*3 tries"):
        load_torch(path)
    # Its three firings are spent: the next read is whole.
    assert torch.equal(load_torch(path)["w"], torch.arange(1000))


def _trial_folder(tmp_path: Path, epochs: int):
    from ray.tune import Checkpoint

    for epoch in range(1, epochs + 1):
        save_torch({"format": CHECKPOINT_FORMAT, "epoch": epoch, "model": {"w": torch.full((10,), epoch)}},
                   tmp_path / f"checkpoint_{epoch - 1:06d}" / TRAINER_STATE, checksum=True)
    return [Checkpoint(str(tmp_path / f"checkpoint_{epoch - 1:06d}")) for epoch in range(1, epochs + 1)]


def test_a_trial_whose_checkpoint_cannot_be_read_fails_rather_than_going_back(tmp_path):
    first, second = _trial_folder(tmp_path / "trial", 2)
    _failing_read(tmp_path / "trial" / "checkpoint_000001" / TRAINER_STATE)
    with pytest.raises(CheckpointReadError):  # Ray retries the trial from the same checkpoint
        resume_state(second)


def test_export_stops_at_a_checkpoint_that_cannot_be_read_and_writes_nothing(tmp_path):
    first, second = _trial_folder(tmp_path / "trial", 2)
    _failing_read(tmp_path / "trial" / "checkpoint_000001" / TRAINER_STATE)
    delivery = Delivery([(second, {"trial_id": "a", "val_acc": 0.9}), (first, {"trial_id": "a", "val_acc": 0.8})],
                        "the highest val_acc", None)
    with pytest.raises(CheckpointReadError, match="checkpoint_000001/trainer.pt"):
        export_best([], tmp_path / "run", SimpleNamespace(metric="val_acc"), splits=None, delivery=delivery)
    assert not (tmp_path / "run").exists()


def test_validation_predictions_that_cannot_be_read_are_a_read_error_not_missing(tmp_path, faults):
    from ray.tune import Checkpoint

    folder = tmp_path / "checkpoint_000000"
    folder.mkdir()
    checkpoint = Checkpoint(str(folder))
    assert load_predictions(checkpoint) is None  # none saved: a checkpoint from before they were
    predictions = ImagePredictions(torch.tensor([0, 1]), torch.tensor([0.9, 0.4]), torch.tensor([0, 0]))
    save_predictions(predictions, folder / PREDICTIONS)
    faults("eio@point=read,times=1")
    assert load_predictions(checkpoint)["predicted"].tolist() == [0, 1]  # the second try reads it
    faults("eio@point=read,times=3,after=1")
    with pytest.raises(CheckpointReadError, match=f"{PREDICTIONS} .*3 tries"):
        load_predictions(checkpoint)


# --- best/ swapped whole ---

def _payload(epoch: int) -> dict:
    description = {"config": {"lr_head": 0.01 * epoch}, "classes": ["cat", "dog"], "weights": {"name": "none"},
                   "normalization": None, "compute": None}
    return model_payload({"w": torch.full((10,), float(epoch))}, description, epoch, {"val_acc": epoch / 10})


def _check_whole(best: Path, epoch: int) -> None:
    """best/ holds every file, all of one write (`epoch`), and the sidecar matches model.pt."""
    assert {p.name for p in best.iterdir()} == BEST_FILES
    digest = (best / "model.pt.sha256").read_text().split()[0]
    assert digest == hashlib.sha256((best / "model.pt").read_bytes()).hexdigest()
    assert load_checkpoint(best)["epoch"] == epoch
    assert json.loads((best / "metrics.json").read_text())["epoch"] == epoch
    assert json.loads((best / "config.json").read_text()) == {"lr_head": 0.01 * epoch}


def _beside(best: Path) -> list[str]:
    return sorted(p.name for p in best.parent.iterdir() if p.name.startswith(".best."))


def test_write_best_swaps_the_whole_folder(tmp_path):
    best = tmp_path / "best"
    write_best(best, _payload(1))
    _check_whole(best, 1)
    (best / "notes.txt").write_text("put here by hand")
    write_best(best, _payload(2))
    _check_whole(best, 2)  # notes.txt went with the old folder
    assert _beside(best) == []


def test_write_best_adds_what_extra_writes_in_the_same_swap(tmp_path):
    best = tmp_path / "best"
    write_best(best, _payload(1))
    write_best(best, _payload(2), extra=lambda new: (new / "search").mkdir())
    assert (best / "search").is_dir() and load_checkpoint(best)["epoch"] == 2


def _crash_in_swap(best: Path, epoch: int, faults_dir: Path) -> subprocess.CompletedProcess:
    """write_best(best, _payload(epoch)) in a child killed (SIGKILL) between its two renames."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import tuner.testing.faults
        from test_checkpoint_files import _payload
        from tuner.train.checkpoint import write_best
        write_best({str(best)!r}, _payload({epoch}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNER_FAULT": "kill@point=swap", "TUNER_FAULT_DIR": str(faults_dir)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_crash_between_the_renames_leaves_a_whole_best_to_read_and_to_recover(tmp_path):
    best = tmp_path / "best"
    write_best(best, _payload(1))
    (tmp_path / "faults").mkdir()
    child = _crash_in_swap(best, 2, tmp_path / "faults")
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not best.exists() and [n.split("-")[0] for n in _beside(best)] == [".best.new", ".best.old"]

    readable = best_folder(best)  # readers take the old folder, whole, where it was renamed aside
    assert readable.name.startswith(".best.old-")
    _check_whole(readable, 1)
    assert load_checkpoint(best)["epoch"] == 1 and load_checkpoint(tmp_path)["epoch"] == 1

    recover_best(best)  # as write_best does first: the old folder back, the half-swapped new one gone
    _check_whole(best, 1)
    assert _beside(best) == []


def test_the_next_write_best_after_a_crash_recovers_then_writes(tmp_path):
    best = tmp_path / "best"
    write_best(best, _payload(1))
    (tmp_path / "faults").mkdir()
    assert _crash_in_swap(best, 2, tmp_path / "faults").returncode == -signal.SIGKILL
    write_best(best, _payload(3))
    _check_whole(best, 3)
    assert _beside(best) == []


# --- files others can read ---

def _modes_under(umask: int, folder: Path) -> dict[str, int]:
    """The modes write_best and atomic_write give, in a child whose umask is `umask` from the start."""
    code = textwrap.dedent(f"""
        import os, sys
        os.umask({umask:#o})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_checkpoint_files import _payload
        from tuner.train.checkpoint import atomic_write, write_best
        folder = Path({str(folder)!r})
        write_best(folder / "best", _payload(1))
        atomic_write(folder / "model.onnx", lambda handle: handle.write(b"onnx"))
    """)
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                   timeout=120)
    paths = [folder / "best", folder / "model.onnx", *(folder / "best").iterdir()]
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in paths}


def test_files_are_readable_by_others_under_umask_022_and_private_under_077(tmp_path):
    shared = _modes_under(0o022, tmp_path / "shared")
    assert shared == {"best": 0o755, "model.onnx": 0o644,
                      **{f"best/{name}": 0o644 for name in BEST_FILES}}
    private = _modes_under(0o077, tmp_path / "private")
    assert private == {"best": 0o700, "model.onnx": 0o600,
                       **{f"best/{name}": 0o600 for name in BEST_FILES}}


def test_atomic_write_gives_the_mode_of_this_process_umask(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write(tmp_path / "f", lambda handle: handle.write(b"x"))
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask
