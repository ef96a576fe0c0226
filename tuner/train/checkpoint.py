"""Checkpoint files: atomic writes, safe loads, and the `best/` folder a run leaves behind.

A load tells damaged bytes from a failed read: CorruptCheckpoint only where the bytes are proven bad (a
missing file, a failed sha256 sidecar, not a zip, a pickle weights_only refuses); an OSError while reading
(EIO, EAGAIN, ETIMEDOUT on a network file system...) is retried, then raised as CheckpointReadError, on
which nothing may be skipped or deleted. Files are written readable as the umask allows, as open() would.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import UserError, first_line
from .model import CHECKPOINT_FORMAT, file_sha256

T = TypeVar("T")  # what read_retrying's read returns

# What a checkpoint says about its model beyond the weights; part of every checkpoint we write.
DESCRIPTION_KEYS = ("config", "classes", "weights", "normalization", "compute")
# A file's sha256 sidecar, `sha256sum` format: torch.load reads a zip without checking its CRCs, so a
# flipped byte in a tensor loads as wrong weights; the sidecar catches that.
CHECKSUM_SUFFIX = ".sha256"
READ_RETRY_SECONDS = (0.2, 0.5)  # waits before the 2nd and 3rd read: a storage hiccup often passes

# Tests only: called as fault_hook(point, path) before each read try ("read") and between best/'s two
# renames ("swap"). tuner/testing/faults.py installs TUNER_FAULT's faults here (train/ may not import it).
fault_hook: Callable[[str, Path], None] | None = None


def _read_umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status; elsewhere os.umask is the only way to read
    it, and it sets the umask while reading, so it runs once, at import, before any thread writes a file."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


# mkstemp and mkdtemp create 0600 and 0700; what we write gets the modes open() and mkdir() would give.
UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK
FOLDER_MODE = 0o777 & ~UMASK


class CorruptCheckpoint(UserError):
    """A checkpoint file that is missing, truncated, damaged or fails its sha256 sidecar."""


class CheckpointReadError(UserError):
    """A checkpoint file that could not be read (an I/O error that outlasted the retries); its bytes may be
    whole, so nothing is skipped or deleted on its account: retry."""


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.

    The file gets the mode open() would give it (0666 less the umask). A failed write (full disk, quota,
    read-only storage) leaves the earlier file as it was and raises an OSError that names `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        failed = _write_error(err)
        if failed is not None:  # a write to a handle names no file: say which
            raise OSError(failed.errno, f"cannot write {path}: {failed.strerror or failed}") from err
        raise


def _write_error(err: BaseException | None) -> OSError | None:
    """The OSError without a file name behind `err`: torch.save reports a failed write (full disk,
    quota) as a RuntimeError ("unexpected pos") raised while handling the OSError."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err if err is not None and err.errno and not err.filename else None


def save_torch(obj: Any, path: Path, *, checksum: bool = False) -> None:
    """torch.save through atomic_write; `checksum` also writes PATH.sha256, which load_torch checks."""
    path = Path(path)
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    sidecar.unlink(missing_ok=True)  # a stale sidecar next to a new file would call it corrupt
    atomic_write(path, lambda handle: torch.save(obj, handle))
    if checksum:
        save_text(f"{file_sha256(path)}  {path.name}\n", sidecar)


class _Damaged(ValueError):
    """The bytes are proven bad; the message says how, in a few words."""


def read_retrying(read: Callable[[], T], shown: str) -> T:
    """`read()`, tried again after each of READ_RETRY_SECONDS when it raises an OSError; then
    CheckpointReadError naming `shown`. A missing file (FileNotFoundError, NotADirectoryError) is no read
    error: it propagates at once."""
    for tried in itertools.count(1):
        try:
            if fault_hook is not None:
                fault_hook("read", Path(shown))
            return read()
        except (FileNotFoundError, NotADirectoryError):
            raise
        except OSError as err:
            if tried > len(READ_RETRY_SECONDS):
                why = f"{err.strerror}, errno {err.errno}" if err.strerror else first_line(err)
                raise CheckpointReadError(f"cannot read checkpoint {shown} ({why}) in {tried} tries; nothing was "
                                          f"deleted: retry when the storage reads again") from err
            time.sleep(READ_RETRY_SECONDS[tried - 1])


def _read_verified(path: Path, shown: str) -> bytes:
    """The file's bytes, checked against its sha256 sidecar when it has one (both read_retrying).

    _Damaged for a missing file or a failed checksum; CheckpointReadError when a read keeps failing.
    """
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)

    def read_both() -> tuple[bytes, str | None]:
        content = path.read_bytes()
        try:
            return content, (sidecar.read_text().split() or [""])[0]
        except FileNotFoundError:
            return content, None  # written without one

    try:
        content, expected = read_retrying(read_both, shown)
    except (FileNotFoundError, NotADirectoryError):
        raise _Damaged("no such file") from None
    if expected is not None and hashlib.sha256(content).hexdigest() != expected:
        raise _Damaged(f"its sha256 does not match {sidecar.name}")
    return content


def _load_verified(path: Path, shown: str) -> Any:
    """torch.load (weights_only) of the file's bytes after the sidecar check: _Damaged when the bytes do not
    load, CheckpointReadError when they cannot be read. Running out of memory is neither: it propagates."""
    content = _read_verified(path, shown)
    try:
        return torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # a zip without its directory, a truncated file, a pickle weights_only refuses
        raise _Damaged(_load_failure(err)) from None


def load_torch(path: str | Path, *, shown: str | None = None) -> Any:
    """Load a file written by save_torch; never returns unverified data when a sidecar exists.

    CorruptCheckpoint (naming `shown`, default the path) if it is missing, truncated or damaged;
    CheckpointReadError if reading it failed on every try (the file may be whole).
    """
    shown = shown or str(path)
    try:
        return _load_verified(Path(path), shown)
    except _Damaged as err:
        raise CorruptCheckpoint(f"checkpoint {shown} is damaged ({err})") from None


def _load_failure(err: Exception) -> str:
    """Why a file did not load, in a few words; torch's own text for a refused pickle advises
    weights_only=False, which is never passed on."""
    if "Weights only load failed" in str(err):
        return "not a PyTorch file of tensors and plain data"
    return first_line(err)[:160]


def save_text(text: str, path: Path) -> None:
    atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def save_json(obj: Any, path: Path) -> None:
    save_text(json.dumps(obj, indent=2) + "\n", path)


def load_checkpoint(path: str | Path, *, trainer_state: bool = False) -> dict[str, Any]:
    """Load one of our best models (or with `trainer_state`, a `tuner train` checkpoint.pt) with
    `weights_only=True`; anything else is a UserError.

    CheckpointReadError (a UserError) when the file cannot be read, as load_torch.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt" if (path / "model.pt").is_file() else best_folder(path / "best") / "model.pt"
    elif not path.exists() and path.name == "best":
        path = best_folder(path) / "model.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; pass a run's best/ folder or its model.pt")
    try:
        payload = _load_verified(path, str(path))
    except _Damaged as err:  # corrupt zip, pickle that weights_only refuses, not a torch file at all
        raise UserError(f"{str(path)!r} is not a readable tuner checkpoint ({err}); pass a best/model.pt "
                        f"written by tuner train or tuner search") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{str(path)!r} is not a tuner checkpoint (no {CHECKPOINT_FORMAT!r} marker); "
            f"pass a best/model.pt written by tuner train or tuner search"
        )
    if "optimizer" in payload and not trainer_state:  # the weights training changed only, for --resume
        raise UserError(f"{str(path)!r} is a training checkpoint, kept for --resume; pass the run's best/ folder "
                        f"or its best/model.pt")
    return payload


def model_payload(model: dict, description: dict[str, Any], epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What `best/model.pt` holds: weights plus what to rebuild and use them (config, classes, weights
    provenance, normalisation: `description`, as in trainer_state.description or a saved trainer state)."""
    return {"format": CHECKPOINT_FORMAT, "model": model,
            **{key: description.get(key) for key in DESCRIPTION_KEYS}, "epoch": epoch, "metrics": metrics}


def write_best(folder: Path, payload: dict[str, Any], *, extra: Callable[[Path], None] | None = None) -> None:
    """Write `best/` whole: model.pt (everything) with its sha256 sidecar, plus config, classes and metrics as
    JSON for people. `extra(new_folder)` adds more to it before it is swapped in (refit: best/search/).

    The new folder is written beside the old (.best.new-*), synced, then swapped in by two renames (best/ ->
    .best.old-*, .best.new-* -> best/), so a reader sees the old best/ or the new one, never a mix, and a
    file put into best/ by hand goes with the old one. A crash between the renames leaves no best/ but a
    whole .best.old-*: readers use it (best_folder) and the next write_best renames it back first.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_best(folder)
    new = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.new-"))
    try:
        os.chmod(new, FOLDER_MODE)
        save_torch(payload, new / "model.pt", checksum=True)
        save_json(payload["config"], new / "config.json")
        save_json(payload["classes"], new / "classes.json")
        compute = payload.get("compute") or {}  # None in checkpoints from before the compute choice
        save_json({**payload["metrics"], "epoch": payload["epoch"], "weights": payload["weights"],
                   "compute_reason": compute.get("reason")}, new / "metrics.json")
        if extra is not None:
            extra(new)
        _fsync_folder(new)
        _swap_in(new, folder)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _swap_in(new: Path, folder: Path) -> None:
    """Put the folder `new` at `folder`: rename(2) cannot replace a non-empty folder, so the old one is
    renamed aside first and removed once the new one is in place."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{new.name.rsplit('.new-', 1)[1]}")
        os.rename(folder, old)
        if fault_hook is not None:
            fault_hook("swap", folder)
        try:
            os.rename(new, folder)
        except BaseException:
            os.rename(old, folder)  # an error (not a crash) never leaves best/ missing
            raise
        _fsync_folder(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, folder)
        _fsync_folder(folder.parent)


def _aside(folder: Path, kind: str) -> list[Path]:
    """The folders beside `folder` that write_best left there (kind "new" or "old"), oldest first."""
    found = [p for p in folder.parent.glob(f".{folder.name}.{kind}-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def best_folder(folder: Path) -> Path:
    """Where to read `folder` (a best/) from: itself, or, when a crash between write_best's two renames left
    none, the whole earlier one it renamed aside (.best.old-*). Reads only; write_best repairs."""
    folder = Path(folder)
    if folder.exists() or not folder.parent.is_dir():
        return folder
    olds = _aside(folder, "old")
    return olds[-1] if olds else folder


def recover_best(folder: Path) -> None:
    """Repair what a crash inside write_best left: best/ renamed back from .best.old-* when it is missing,
    and the stale .best.new-* (perhaps half written) and .best.old-* folders removed."""
    folder = Path(folder)
    olds = _aside(folder, "old")
    if not folder.exists() and olds:
        os.rename(olds.pop(), folder)
    for stale in [*_aside(folder, "new"), *olds]:
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    """Make the folder's entries (new files, renames) durable, as fsync does a file's bytes."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
