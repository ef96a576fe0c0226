"""Test hook: faults injected into real searches. Inert unless the TUNER_FAULT variable is set.

TUNER_FAULT="KIND@WHEN[,times=N][,after=K][,NAME=VALUE...]", several separated by ";". WHEN is
`epoch=E[,step=S]`: in a trial whose hyperparameters match every NAME=VALUE, before training step S
(default 0) of epoch E (from 1); or `point=checkpoint` (in a trial, its checkpoint file written but not
yet handed to Ray), `point=export` (in the driver, the tables written but not yet best/), `point=read`
(before each try to read a checkpoint file, train/checkpoint.py) or `point=swap` (between the two
renames that swap in a new best/). The read and swap points fire in any process that imported this
module (a search's driver and trials; a test), for faults without NAME=VALUE. KIND:
    raise    raise RuntimeError("injected fault ...")
    eio      raise OSError(EIO), as a read from failing storage does
    kill     SIGKILL the trial's process (a crash Ray only sees as a dead worker)
    oom      raise torch.OutOfMemoryError, as a device that ran out of memory does
    corrupt  flip bytes inside the trial's latest checkpoint file, then SIGKILL the process
    crash    SIGKILL the whole search, as a machine that loses power: the process group named in
             TUNER_FAULT_DIR/search.pgid (the test starts the driver in a session of its own and writes
             its id there; Ray's GCS and raylet are in it, and the trials die with the raylet), and then
             this process
    sigint, sigterm
             send that signal to the driver (the process named in TUNER_FAULT_DIR/search.pgid, the leader of
             its session), as `kill -INT` or a batch scheduler does, and go on
    ctrlc    send SIGINT to the driver's whole process group, as Ctrl-C in a terminal does, and go on
Each fault fires at most N times (default 1) over the whole search, after letting its first K
occasions pass (default 0): TUNER_FAULT_DIR (required) holds one marker file per occasion, so a
retried trial or a resumed search runs clean. Ray workers on the local node inherit the driver's
environment.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..train import checkpoint as checkpoint_files

KINDS = ("raise", "kill", "oom", "corrupt", "crash", "eio", "sigint", "sigterm", "ctrlc")
SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
POINTS = ("checkpoint", "export", "read", "swap")
TRAINER_STATE = "trainer.pt"  # trainable.TRAINER_STATE (imported from there, it would be a cycle)


def parse_faults(spec: str) -> list[dict[str, Any]]:
    faults = []
    for text in filter(None, (part.strip() for part in spec.split(";"))):
        kind, _, rest = text.partition("@")
        fields = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
        if kind not in KINDS or ("epoch" in fields) == (fields.get("point") in POINTS):
            raise ValueError(f"TUNER_FAULT {text!r}: expected KIND@epoch=E[,step=S] or KIND@point=P, then "
                             f"[,times=N][,after=K][,NAME=VALUE], with KIND one of {', '.join(KINDS)} and P one "
                             f"of {', '.join(POINTS)}")
        when = ("point", fields.pop("point")) if "point" in fields else (int(fields.pop("epoch")),
                                                                          int(fields.pop("step", 0)))
        faults.append({"kind": kind, "when": when, "times": int(fields.pop("times", 1)),
                       "after": int(fields.pop("after", 0)), "where": fields})
    return faults


def _same(value: Any, text: str) -> bool:
    try:
        return value is not None and float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def _active(config: dict[str, Any] | None) -> tuple[str, list[tuple[int, dict[str, Any]]]] | None:
    """The marker folder and the faults that apply to a trial of `config` (None: the driver)."""
    spec = os.environ.get("TUNER_FAULT")
    if not spec:
        return None
    folder = os.environ.get("TUNER_FAULT_DIR")
    if not folder:
        raise RuntimeError("TUNER_FAULT is set but TUNER_FAULT_DIR is not; it must name a folder for markers")
    faults = [(index, fault) for index, fault in enumerate(parse_faults(spec))
              if all(_same((config or {}).get(name), value) for name, value in fault["where"].items())]
    return (folder, faults) if faults else None


def fault_hook(config: dict[str, Any]) -> Callable[[Any, int], None] | None:
    """The Trainer.step_hook that injects this trial's TUNER_FAULT faults; None when there are none."""
    active = _active(config)
    if active is None:
        return None
    folder, faults = active

    def hook(trainer, step: int) -> None:
        for index, fault in faults:
            if fault["when"] == (trainer.epoch + 1, step) and _claim(folder, index, fault):
                _fire(fault)

    return hook


def fault_point(name: str, config: dict[str, Any] | None = None) -> None:
    """Fire the TUNER_FAULT faults set for point `name` (in a trial of `config`, or in the driver)."""
    active = _active(config)
    for index, fault in active[1] if active else []:
        if fault["when"] == ("point", name) and _claim(active[0], index, fault):
            _fire(fault)


def _claim(folder: str, index: int, fault: dict[str, Any]) -> bool:
    """Count this occasion (an exclusive marker file); True when it is one of the fault's firings."""
    for n in range(fault["after"] + fault["times"]):
        try:
            with open(Path(folder) / f"fault{index}.{n}", "x") as marker:
                marker.write(_trial_id() + "\n")
            return n >= fault["after"]
        except FileExistsError:
            continue
    return False


def _trial_id() -> str:
    from ray import tune

    try:
        return tune.get_context().get_trial_id() or "driver"
    except Exception:  # not in a Ray worker: the driver
        return "driver"


def _fire(fault: dict[str, Any]) -> None:
    when = fault["when"]
    where = f"the {when[1]} point" if when[0] == "point" else f"epoch {when[0]}, step {when[1]}"
    if fault["kind"] == "raise":
        raise RuntimeError(f"injected fault (TUNER_FAULT) at {where}")
    if fault["kind"] == "eio":
        raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected by TUNER_FAULT at {where})")
    if fault["kind"] in SIGNALS:
        os.kill(int((Path(os.environ["TUNER_FAULT_DIR"]) / "search.pgid").read_text()), SIGNALS[fault["kind"]])
        return
    if fault["kind"] == "ctrlc":
        os.killpg(int((Path(os.environ["TUNER_FAULT_DIR"]) / "search.pgid").read_text()), signal.SIGINT)
        return
    if fault["kind"] == "oom":
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected at {where})")
    if fault["kind"] == "corrupt":
        from ray import tune

        checkpoint = tune.get_checkpoint()  # the latest one this trial reported
        if checkpoint is not None:
            path = Path(checkpoint.path) / TRAINER_STATE  # local storage only
            with open(path, "r+b") as handle:
                handle.seek(path.stat().st_size // 2)
                block = handle.read(64)
                handle.seek(-len(block), os.SEEK_CUR)
                handle.write(bytes(b ^ 0xFF for b in block))
    sys.stdout.flush()
    sys.stderr.flush()
    if fault["kind"] == "crash":
        os.killpg(int((Path(os.environ["TUNER_FAULT_DIR"]) / "search.pgid").read_text()), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _checkpoint_fault(point: str, path: Path) -> None:
    fault_point(point)


# train/ may not import this layer: its read and swap points call this hook instead.
checkpoint_files.fault_hook = _checkpoint_fault
