"""Run settings of a search: everything about it that is not a hyperparameter.

RunSettings is the one list of them. Each field's metadata (see `setting`) is what the rest reads:
the CLI builds the `tuner search` flags and their help from it, a space file's SETTINGS may set the
fields marked `in_space_file`, and `check` reads each field's allowed values. A setting's flag is its
name with dashes (`max_steps` -> `--max-steps`), or `--no-NAME` for a switch that is on by default.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any

from ..errors import UserError
from ..train.checks import Bounds, check_value
from ..train.config import METRICS
from .budget import SearchBudget, asha_rungs, search_budget
from .selection import AUTO, RULES

KEEP_CHECKPOINTS = ("best", "all")
REFIT = ("auto", "on", "off")
# refit auto: on below this many training images. There the validation share is a large part of the labels
# (a third more images at 20/10 a class), and a refit costs one trial's steps, small next to a search;
# above it, the learning curve is flat enough that the extra images gain little for the driver's time.
REFIT_AUTO_IMAGES = 10_000


def setting(default: Any, help: str, *, in_space_file: bool = False, has_flag: bool = True,
            train_flag: bool = False, choices: tuple[str, ...] | None = None, bounds: Bounds | None = None,
            old_name: str | None = None, renamed_because: str = "") -> Any:
    """A RunSettings field and what the CLI, space files and `check` need to know about it.

    train_flag: `tuner train` has the flag too. old_name: the name before a rename, still read (flag,
    SETTINGS, a run's tuner.json) with a note that says `renamed_because`.
    """
    return field(default=default, metadata={
        "help": help, "in_space_file": in_space_file, "has_flag": has_flag, "train_flag": train_flag,
        "choices": choices, "bounds": bounds, "old_name": old_name, "renamed_because": renamed_because})


_AT_LEAST_ONE, _POSITIVE = Bounds(1), Bounds(0.0, low_inclusive=False)


@dataclass
class RunSettings:
    """Everything about a search that is not a hyperparameter; the fields are in `tuner search --help` order."""

    data: str | None = setting(None, "image folder (default: the space's demo data, if it has some)",
                               in_space_file=True)
    metric: str = setting("val_acc", "val_acc (maximised) or val_loss (minimised)", in_space_file=True,
                          choices=tuple(METRICS))
    trials: int = setting(20, "trials to run", in_space_file=True, bounds=_AT_LEAST_ONE)
    max_steps: int | None = setting(  # None: sized by the data (search_budget)
        None, "a trial's budget in optimizer steps, if ASHA never stops it (default: sized by the training set, "
              "printed when the search starts)", in_space_file=True, bounds=_AT_LEAST_ONE)
    max_epochs: int | None = setting(
        None, "the budget in epochs instead of --max-steps, one report an epoch (default: none)", in_space_file=True,
        bounds=_AT_LEAST_ONE)
    grace_period: int | None = setting(  # None: one round
        None, "ASHA: budget every trial gets before it can be stopped, in epochs with --max-epochs, else steps "
              "(default: one report's worth)", in_space_file=True, bounds=_AT_LEAST_ONE)
    reduction_factor: int = setting(3, "ASHA: keep the top 1/N at each rung", in_space_file=True,
                                    bounds=Bounds(2))
    max_concurrent: int = setting(2, "trials running at once", in_space_file=True, bounds=_AT_LEAST_ONE)
    cpus_per_trial: float = setting(1.0, "CPUs each trial reserves", in_space_file=True, bounds=_POSITIVE)
    gpus_per_trial: float = setting(0.0, "GPUs each trial reserves (0.5 packs two trials on a GPU)",
                                    in_space_file=True, bounds=Bounds(0.0))
    time_budget: float | None = setting(  # then Ray stops the search, running trials included
        None, "seconds after which the search stops, running trials included (default: none)", in_space_file=True,
        bounds=_POSITIVE)
    sampler_seed: int = setting(0, "seed of the Optuna sampler", in_space_file=True, bounds=Bounds(0),
                                old_name="seed",
                                renamed_because="to tell it from a trial's own: the hyperparameter seed")
    max_failures: int = setting(2, "restarts of a crashed trial from its last checkpoint", in_space_file=True,
                                bounds=Bounds(0))
    # best: while the search runs, delete the weights no trial will be delivered or resumed from
    # (search/pruning.py), and when it ends the checkpoints of finished trials but the best trial's (best/
    # holds the model); all: keep every trial's (Ray keeps each trial's best and latest).
    keep_checkpoints: str = setting(
        "best", "best: delete, as the search goes, the weights of checkpoints that no trial will be delivered or "
                "resumed from, and when it ends the checkpoints of finished trials other than the best trial's; "
                "all: keep them", choices=KEEP_CHECKPOINTS)
    # auto: within_noise from pretrained weights, highest from random init (selection.rule_for_weights says why).
    selection: str = setting(
        AUTO, "which trial best/ delivers: within_noise, the cheapest (fewest trained stages, then steps) of the top "
              "trials that a paired test cannot tell from the best on the validation images; highest, the best by "
              "the metric; auto: within_noise from pretrained weights, highest from random init (weights none); "
              "either way the summary lists the trials within noise",
        in_space_file=True, choices=(AUTO, *RULES))
    refit: str = setting(
        "auto", f"after the search, train the chosen configuration again on train+val for its chosen steps "
                f"and deliver that in best/ (the search's own checkpoint is kept in best/search/); auto: on below "
                f"{REFIT_AUTO_IMAGES:,} training images, where the validation images are a large share of the "
                f"labels and the refit costs one trial's steps", in_space_file=True, choices=REFIT)
    # An earlier run whose finished trials enter the new study as history (warm_start.py says which fit).
    warm_start: str | None = setting(
        None, "seed the Optuna study with the finished trials of this earlier run (a run folder) whose "
              "hyperparameters fit this space; prints how many it took and why it left others out (default: none)")
    storage: str = setting("runs", "where run folders go (STORAGE/NAME)")
    name: str | None = setting(None, "run name (default: SPACE-YYYYmmdd-HHMMSS)")
    # Tracking (tracking.py): where a run's records go besides the run folder, so not in a space file.
    mlflow: str | None = setting(
        None, "also log every trial's hyperparameters and metrics, and the best model, to this MLflow tracking URI, "
              "e.g. sqlite:///mlflow.db (needs pip install 'tuner[mlflow]'; default: none)")
    wandb: str | None = setting(
        None, "also log every trial's hyperparameters and metrics to this W&B project; WANDB_MODE=offline keeps them "
              "in RUN/trial_<id>/wandb/ (needs pip install 'tuner[wandb]'; default: none)")
    address: str | None = setting(None, "join this Ray cluster (default: start a local Ray)")
    autoscaling: bool = setting(  # skip the "enough resources now" check
        False, "the --address cluster adds nodes on demand (cluster.yaml): do not require the trials' GPUs and "
               "CPUs to be there when the search starts")
    early_stopping: bool = setting(  # False: no ASHA, a baseline for ASHA's savings
        True, "run every trial to its whole budget (no ASHA); a baseline for what ASHA saves", in_space_file=True)
    # Tell Optuna a trial that ASHA stopped as COMPLETE with its best score (Ray's own way) instead of PRUNED
    # with its scores by step (TPE then ranks it by how far it got): bench/transfer.py compares the two.
    stopped_as_complete: bool = setting(
        False, "tell Optuna a trial that ASHA stopped as complete with its best score (Ray's default) instead "
               "of pruned with its scores by step")
    reuse_workers: bool = setting(  # run trial after trial in one Ray worker process (fast turnover)
        True, "start a fresh Ray worker process for every trial (Ray's default; slower turnover)")
    loader_workers: int | None = setting(
        None, "data-loading processes; default: up to 8 with CUDA, 0 on CPU (loading in the main process leaves "
              "every core to the model)", train_flag=True, bounds=Bounds(0), old_name="workers",
        renamed_because="to tell data loading from Ray's worker processes")
    skip_bad_images: bool = setting(False, "drop image files that cannot be read instead of refusing the data "
                                    "(files that are not images by their extension are always skipped)",
                                    train_flag=True)
    # The space's own built-in data when no --data is given (demo.py); a space file's choice, no flag.
    demo_data: bool = setting(False, "use the space's built-in demo data, written on first use, when no --data "
                                     "is given", in_space_file=True, has_flag=False)

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def search_budget(self, train_images: int, batch_size: int) -> SearchBudget:
        """What every trial may spend: max_steps, else max_epochs, else sized by the data (runs/budget.py)."""
        return search_budget(train_images, batch_size, max_steps=self.max_steps, max_epochs=self.max_epochs,
                             grace_period=self.grace_period)

    def refits(self, train_images: int) -> bool:
        """Whether the search ends with a refit on train+val (refit on, or auto with small data)."""
        return self.refit == "on" or (self.refit == "auto" and train_images < REFIT_AUTO_IMAGES)

    def asha_rungs(self, budget: SearchBudget) -> list[int]:
        """The budget steps at which ASHA compares trials; none without early stopping."""
        return asha_rungs(budget, self.reduction_factor) if self.early_stopping else []

    def check(self) -> None:
        """Raise a one-line UserError for a value of the wrong type or out of range, or two that clash."""
        for item in fields(self):
            setattr(self, item.name, check_setting(item.name, getattr(self, item.name)))
        if self.max_steps is not None and self.max_epochs is not None:
            raise UserError(f"max_steps ({self.max_steps}) and max_epochs ({self.max_epochs}) both set a trial's "
                            f"budget; pass one of them")
        longest = ("max_epochs", self.max_epochs) if self.max_epochs is not None else ("max_steps", self.max_steps)
        if self.grace_period is not None and longest[1] is not None and self.grace_period > longest[1]:
            raise UserError(f"grace_period ({self.grace_period}) must be <= {longest[0]} ({longest[1]})")


# A budget flag replaces the space file's whole budget, in either unit: these go together.
BUDGET = ("max_steps", "max_epochs", "grace_period")


def settings_under_flags(space_settings: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The run settings in force: the space file's SETTINGS, then the flags `given` (those not None).

    Returns them and one line for each SETTINGS value that a flag of another name overrides, naming both:
    --max-epochs replaces SETTINGS' max_steps (and grace_period, counted in the old unit).
    """
    notes = []
    budget_flags = [name for name in ("max_steps", "max_epochs") if name in given]
    chosen = dict(space_settings)
    if budget_flags:
        winner = " and ".join(f"{flag(_field(name))} {given[name]}" for name in budget_flags)
        for name in BUDGET:
            if name in chosen and name not in given:
                value = chosen.pop(name)
                remedy = (f"pass {flag(_field(name))} to set one" if name == "grace_period"
                          else f"pass {flag(_field(name))} {value} instead to keep it")
                notes.append(f"{name}={value} from the space's SETTINGS ignored: {winner} replaces the space's "
                             f"budget; {remedy}")
    chosen.update(given)
    return chosen, notes


def _field(name: str) -> Field:
    return next(item for item in fields(RunSettings) if item.name == name)


def check_setting(name: str, value: Any, label: str | None = None) -> Any:
    """Check one setting's value by its field's type, choices and range (errors call it `label`, e.g. its
    flag); returns it, an int as float where a float is due."""
    item = _field(name)
    return check_value(label or name, value, item.type, choices=item.metadata["choices"],
                       bounds=item.metadata["bounds"])


def flag(item: Field) -> str | None:
    """A setting's `tuner search` flag: --max-steps for max_steps, --no-NAME for a switch on by default."""
    if not item.metadata["has_flag"]:
        return None
    dashed = item.name.replace("_", "-")
    return f"--no-{dashed}" if item.default is True else f"--{dashed}"


def old_flag(item: Field) -> str | None:
    """The flag a renamed setting had (--seed for sampler_seed)."""
    return f"--{item.metadata['old_name'].replace('_', '-')}" if item.metadata["old_name"] else None


def space_file_names() -> tuple[str, ...]:
    """The run settings a space file's SETTINGS may set."""
    return tuple(item.name for item in fields(RunSettings) if item.metadata["in_space_file"])


def renamed_note(name: str, old: str, new: str) -> str:
    """The one-line note for setting `name` given by its old spelling `old` (a flag or a key) instead of `new`."""
    return f"{old} is now {new} ({_field(name).metadata['renamed_because']}); the old name still works for now"


def new_names() -> dict[str, str]:
    """Old name -> new name of each renamed setting: {"seed": "sampler_seed", "workers": "loader_workers"}."""
    return {item.metadata["old_name"]: item.name for item in fields(RunSettings) if item.metadata["old_name"]}


def with_new_names(values: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """`values` with each renamed setting's old name (seed, workers) replaced by its new one, and the
    (old, new) pairs replaced. Raises UserError when both names are given."""
    renamed = new_names()
    found = [(old, new) for old, new in renamed.items() if old in values]
    for old, new in found:
        if new in values:
            raise UserError(f"both {old!r} and {new!r} are given ({values[old]!r}, {values[new]!r}); "
                            f"{old!r} is the old name of {new!r}: keep only {new!r}")
    return {renamed.get(name, name): value for name, value in values.items()}, found


def recorded_settings(values: dict[str, Any], source: str) -> RunSettings:
    """The settings a run recorded (RUN/tuner.json; `source` names it in errors), checked as a new search's.

    A run recorded before the renames holds seed and workers: they are read as sampler_seed and
    loader_workers, without a note (the user need not change a run's record). One recorded before the
    refit has no `refit`: read as off, so its resume delivers what it delivered before.
    """
    values, _ = with_new_names(values)
    # A run recorded before the refit existed ended with the search's own best/: resuming it keeps that.
    values = {"refit": "off", **values}
    unknown = sorted(set(values) - {item.name for item in fields(RunSettings)})
    if unknown:
        raise UserError(f"{source} has settings this tuner does not know ({', '.join(unknown)}); resume it with "
                        f"the tuner version that started it")
    settings = RunSettings(**values)
    try:
        settings.check()
    except UserError as err:
        raise UserError(f"{source} holds a bad setting: {err}; fix the file or start a new search") from None
    return settings
