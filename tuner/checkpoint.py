"""Checkpoint files: atomic writes, safe loads, and the `best/` folder a run leaves behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError, first_line
from .model import CHECKPOINT_FORMAT

# What a checkpoint says about its model beyond the weights; part of every checkpoint we write.
DESCRIPTION_KEYS = ("config", "classes", "weights", "normalization")


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    atomic_write(Path(path), lambda handle: torch.save(obj, handle))


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
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, pickle that weights_only refuses, not a torch file at all
        raise UserError(f"{str(path)!r} is not a readable tuner checkpoint ({first_line(err)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{str(path)!r} is not a tuner checkpoint (no {CHECKPOINT_FORMAT!r} marker); "
            f"pass a best/model.pt written by tuner train or tuner search"
        )
    return payload


def model_payload(model: dict, description: dict[str, Any], epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What `best/model.pt` holds: weights plus what to rebuild and use them (config, classes, weights
    provenance, normalisation: `description`, as in Trainer.description() or a saved trainer state)."""
    return {"format": CHECKPOINT_FORMAT, "model": model,
            **{key: description[key] for key in DESCRIPTION_KEYS}, "epoch": epoch, "metrics": metrics}


def write_best(folder: Path, payload: dict[str, Any]) -> None:
    """Write `best/`: model.pt (everything), plus config, classes and metrics as JSON for people."""
    folder = Path(folder)
    save_torch(payload, folder / "model.pt")
    save_json(payload["config"], folder / "config.json")
    save_json(payload["classes"], folder / "classes.json")
    save_json({**payload["metrics"], "epoch": payload["epoch"], "weights": payload["weights"]},
              folder / "metrics.json")
