"""Checkpoint files: atomic writes, safe loads, and the `best/` folder a run leaves behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, first_line
from .model import CHECKPOINT_FORMAT, file_sha256

# What a checkpoint says about its model beyond the weights; part of every checkpoint we write.
DESCRIPTION_KEYS = ("config", "classes", "weights", "normalization", "compute")
# A file's sha256 sidecar, `sha256sum` format: torch.load reads a zip without checking its CRCs, so a
# flipped byte in a tensor loads as wrong weights; the sidecar catches that.
CHECKSUM_SUFFIX = ".sha256"


class CorruptCheckpoint(UserError):
    """A checkpoint file that is missing, truncated, damaged or fails its sha256 sidecar."""


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.

    A failed write (full disk, quota, read-only storage) leaves the earlier file as it was and raises
    an OSError that names `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
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


def _verified_load(path: Path) -> Any:
    """torch.load (weights_only) after checking the file against its sha256 sidecar, when it has one."""
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if sidecar.is_file():
        expected = (sidecar.read_text().split() or [""])[0]
        if file_sha256(path) != expected:
            raise ValueError(f"its sha256 does not match {sidecar.name}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_torch(path: str | Path, *, shown: str | None = None) -> Any:
    """Load a file written by save_torch; CorruptCheckpoint (naming `shown`, default the path) if it is
    missing, truncated or damaged. Never returns unverified data when a sidecar exists."""
    try:
        return _verified_load(Path(path))
    except Exception as err:  # a zip without its directory, a failed checksum, a pickle weights_only refuses
        raise CorruptCheckpoint(f"checkpoint {shown or str(path)} is damaged ({_load_failure(err)})") from None


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints with `weights_only=True`; anything else is a UserError."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt" if (path / "model.pt").is_file() else path / "best" / "model.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {str(path)!r}; pass a run's best/ folder or its model.pt")
    try:
        payload = _verified_load(path)
    except Exception as err:  # corrupt zip, pickle that weights_only refuses, not a torch file at all
        raise UserError(f"{str(path)!r} is not a readable tuner checkpoint ({_load_failure(err)}); "
                        f"pass a best/model.pt "
                        f"written by tuner train or tuner search") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{str(path)!r} is not a tuner checkpoint (no {CHECKPOINT_FORMAT!r} marker); "
            f"pass a best/model.pt written by tuner train or tuner search"
        )
    return payload


def model_payload(model: dict, description: dict[str, Any], epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What `best/model.pt` holds: weights plus what to rebuild and use them (config, classes, weights
    provenance, normalisation: `description`, as in trainer_state.description or a saved trainer state)."""
    return {"format": CHECKPOINT_FORMAT, "model": model,
            **{key: description.get(key) for key in DESCRIPTION_KEYS}, "epoch": epoch, "metrics": metrics}


def write_best(folder: Path, payload: dict[str, Any]) -> None:
    """Write `best/`: model.pt (everything), plus config, classes and metrics as JSON for people."""
    folder = Path(folder)
    save_torch(payload, folder / "model.pt")
    save_json(payload["config"], folder / "config.json")
    save_json(payload["classes"], folder / "classes.json")
    compute = payload.get("compute") or {}  # None in checkpoints from before the compute choice
    save_json({**payload["metrics"], "epoch": payload["epoch"], "weights": payload["weights"],
               "compute_reason": compute.get("reason")}, folder / "metrics.json")
