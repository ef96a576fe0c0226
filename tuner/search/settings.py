"""Run settings of a search: everything about it that is not a hyperparameter."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..train.config import METRICS
from ..errors import UserError

KEEP_CHECKPOINTS = ("best", "all")


@dataclass
class RunSettings:
    """Everything about a search that is not a hyperparameter; each is a `tuner search` flag."""

    data: str | None = None
    metric: str = "val_acc"
    trials: int = 20
    max_steps: int | None = None  # a trial's budget in optimizer steps; None: sized by the data (budget.py)
    max_epochs: int | None = None  # the budget as epochs instead, one report an epoch
    grace_period: int | None = None  # ASHA: budget every trial gets (epochs with max_epochs, else steps); None: one round
    reduction_factor: int = 3  # ASHA: keep the top 1/3 at each rung
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    time_budget: float | None = None  # seconds; then Ray stops the search, running trials included
    seed: int = 0
    early_stopping: bool = True  # False: no ASHA, every trial runs max_epochs (a baseline for ASHA's savings)
    # Tell Optuna a trial that ASHA stopped as COMPLETE with its best score (Ray's own way) instead of PRUNED
    # with its scores by step (TPE then ranks it by how far it got): bench/transfer.py compares the two.
    stopped_as_complete: bool = False
    reuse_workers: bool = True  # run trial after trial in one Ray worker process (fast turnover)
    max_failures: int = 2  # a crashed trial restarts from its last checkpoint this many times
    # best: when the search ends, delete finished trials' checkpoints but the best trial's (best/ holds
    # the model); all: keep every trial's (Ray keeps each trial's best and latest).
    keep_checkpoints: str = "best"
    demo_data: bool = False
    storage: str = "runs"
    name: str | None = None
    address: str | None = None
    autoscaling: bool = False  # the cluster adds GPU/CPU nodes on demand: skip the "enough resources now" check
    workers: int | None = None
    skip_bad_images: bool = False

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def check(self) -> None:
        for item in fields(self):
            value, kind = getattr(self, item.name), item.type.split(" | ")[0]
            expected = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}[kind]
            if not (value is None and "None" in item.type) and (
                    not isinstance(value, expected) or (kind != "bool" and isinstance(value, bool))):
                raise UserError(f"{item.name} must be {kind}, but got {value!r}")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"workers must be >= 0, but got {self.workers}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise UserError(f"time_budget must be > 0 seconds, but got {self.time_budget}")
        if self.metric not in METRICS:
            raise UserError(f"metric {self.metric!r} is not allowed; choose one of {', '.join(METRICS)}")
        for name in ("trials", "max_steps", "max_epochs", "grace_period", "max_concurrent"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, but got {getattr(self, name)}")
        if self.max_steps is not None and self.max_epochs is not None:
            raise UserError(f"max_steps ({self.max_steps}) and max_epochs ({self.max_epochs}) both set a trial's "
                            f"budget; pass one of them")
        longest = ("max_epochs", self.max_epochs) if self.max_epochs is not None else ("max_steps", self.max_steps)
        if self.grace_period is not None and longest[1] is not None and self.grace_period > longest[1]:
            raise UserError(f"grace_period ({self.grace_period}) must be <= {longest[0]} ({longest[1]})")
        if self.reduction_factor < 2:
            raise UserError(f"reduction_factor must be >= 2, but got {self.reduction_factor}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise UserError(f"cpus_per_trial must be > 0 and gpus_per_trial >= 0, but got "
                            f"{self.cpus_per_trial} and {self.gpus_per_trial}")
        if self.keep_checkpoints not in KEEP_CHECKPOINTS:
            raise UserError(f"keep_checkpoints {self.keep_checkpoints!r} is not allowed; choose one of "
                            f"{', '.join(KEEP_CHECKPOINTS)}")
        if self.max_failures < 0:
            raise UserError(f"max_failures must be >= 0, but got {self.max_failures}")
