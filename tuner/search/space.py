"""Search-space files: load one with importlib and check it before any trial runs.

A space file is a Python module with `def space(trial)`, an Optuna define-by-run function that
suggests trainer hyperparameters (by their TrainConfig names) and returns a dict of constants or None.
Optional module-level names: `SETTINGS = {...}` (run defaults that flags override: the run settings
marked in_space_file in runs/settings.py, and hyperparameters fixed for every trial) and
`START = [{...}, ...]` (configurations to try first, e.g. the seed tutorial's recipe).
A space file is Python and runs with the user's rights: load only files you trust.
"""

from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..errors import UserError
from ..runs.settings import new_names, renamed_note, space_file_names, with_new_names
from ..train.config import field_names, make_config, unknown_key_message

# The shipped spaces are package data (tuner/search/spaces/), so a wheel install has them too.
SPACES_DIR = Path(str(importlib.resources.files("tuner.search") / "spaces"))
# How many random draws of the space are checked before the search starts.
_VALIDATION_DRAWS = 8


@dataclass
class SearchSpace:
    """A loaded, checked space file."""

    name: str
    path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    start: list[dict[str, Any]] = field(default_factory=list)
    # Hyperparameters fixed for every trial that the space file itself does not set (from SETTINGS).
    fixed: dict[str, Any] = field(default_factory=dict)
    searched: list[str] = field(default_factory=list)
    # Each searched hyperparameter's distribution as the file declares it, for RUN/tuner.json (distribution_record).
    distributions: list[dict[str, Any]] = field(default_factory=list)

    def define_by_run(self) -> DefineByRun:
        """What the searcher calls for every trial: the file's space(trial) plus the fixed values."""
        return DefineByRun(self.path, self.fixed)


class DefineByRun:
    """The space file's `space(trial)` plus fixed values, picklable by path.

    Ray pickles the searcher for `tuner resume`; pickling the path instead of the function means the
    file is loaded again from where the user named it, never from a copy in the run folder.
    """

    def __init__(self, path: Path, fixed: dict[str, Any]):
        self.path, self.fixed = Path(path), dict(fixed)
        self._function: Callable | None = None

    def __getstate__(self):
        return {"path": self.path, "fixed": self.fixed}

    def __setstate__(self, state):
        self.__init__(state["path"], state["fixed"])

    def __call__(self, trial) -> dict[str, Any]:
        if self._function is None:
            self._function = _import(self.path).space
        constants = self._function(trial)
        if constants is not None and not isinstance(constants, dict):
            raise UserError(f"space(trial) in {str(self.path)!r} must return a dict of constants or None, "
                            f"not {type(constants).__name__}")
        return {**(constants or {}), **self.fixed}  # `--set` wins over the file


def resolve_path(name_or_path: str) -> Path:
    """`finetune` -> the shipped tuner/search/spaces/finetune.py; anything with a slash or .py is a path."""
    if "/" in name_or_path or name_or_path.endswith(".py"):
        return Path(name_or_path).expanduser()
    return SPACES_DIR / f"{name_or_path}.py"


def load_space(name_or_path: str) -> SearchSpace:
    """Import a space file and check its names; every problem is a one-line UserError."""
    path = resolve_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.py") if p.stem != "__init__"))
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"space file {str(path)!r} {problem}; pass a path or one of: {known}")
    if path.suffix != ".py":  # importlib has no loader for other suffixes
        raise UserError(f"space file {str(path)!r} is not a .py file; a search space is a Python module "
                        f"with def space(trial) (see the shipped spaces in tuner/search/spaces/)")
    module = _import(path)
    if not callable(getattr(module, "space", None)):
        raise UserError(f"space file {str(path)!r} defines no function space(trial); add one "
                        f"(see the shipped spaces in tuner/search/spaces/)")
    return SearchSpace(name=path.stem, path=path.resolve(), settings=_checked_settings(module, path),
                       start=_checked_start(module, path))


def check_space(space: SearchSpace) -> None:
    """Draw the space a few times with its fixed values; every draw must make a valid TrainConfig."""
    for name in space.fixed:
        if name not in field_names():
            raise UserError(unknown_key_message(name))
    declared = _check_draws(space.define_by_run(), space.path)
    _check_start_is_searched(space)
    space.searched = list(declared)
    space.distributions = [distribution_record(name, distribution) for name, distribution in declared.items()]


def distribution_record(name: str, distribution: optuna.distributions.BaseDistribution) -> dict[str, Any]:
    """A suggested hyperparameter's distribution as RUN/tuner.json keeps it (runs/run_files.py reads it)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return {"name": name, "kind": "categorical", "low": None, "high": None, "log": False, "step": None,
                "choices": list(distribution.choices)}
    kind = "int" if isinstance(distribution, optuna.distributions.IntDistribution) else "float"
    return {"name": name, "kind": kind, "low": distribution.low, "high": distribution.high, "log": distribution.log,
            "step": distribution.step, "choices": None}


def _import(path: Path):
    module_name = f"tuner_space_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:  # null bytes give neither a file name nor a line
        where = f"{err.filename or path}" + (f":{err.lineno}" if err.lineno else "")
        raise UserError(f"space file {where}: syntax error: {err.msg}; fix the file") from None
    except Exception as err:
        raise UserError(f"space file {str(path)!r} failed to import: {type(err).__name__}: {err}") from None
    sys.modules[module_name] = module
    return module


def _checked_settings(module, path: Path) -> dict[str, Any]:
    """SETTINGS with every key a run setting a space file may set (runs/settings.py) or a hyperparameter; an
    old name (seed) is read as the new one (sampler_seed), with a note on stderr."""
    settings = getattr(module, "SETTINGS", {})
    if not isinstance(settings, dict):
        raise UserError(f"SETTINGS in {str(path)!r} must be a dict, but is {type(settings).__name__}")
    allowed = space_file_names()
    old_names = [old for old, new in new_names().items() if new in allowed]
    for name in settings:
        if name not in allowed and name not in old_names and name not in field_names():
            close = difflib.get_close_matches(str(name), [*allowed, *field_names()], n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"SETTINGS in {str(path)!r} has unknown key {name!r}{hint}; allowed: run settings "
                            f"{', '.join(allowed)} or any hyperparameter")
    try:
        settings, renamed = with_new_names(settings)
    except UserError as err:
        raise UserError(f"SETTINGS in {str(path)!r}: {err}") from None
    for old, new in renamed:
        print(f"tuner: note: SETTINGS in {str(path)!r}: {renamed_note(new, repr(old), repr(new))}", file=sys.stderr)
    return settings


def _checked_start(module, path: Path) -> list[dict[str, Any]]:
    start = getattr(module, "START", [])
    if not isinstance(start, list) or not all(isinstance(point, dict) for point in start):
        raise UserError(f"START in {str(path)!r} must be a list of dicts of hyperparameters")
    for point in start:
        try:
            make_config(point)
        except UserError as err:
            raise UserError(f"START in {str(path)!r}: {err}") from None
    return [dict(point) for point in start]


def _check_start_is_searched(space: SearchSpace) -> None:
    """Every value of a START point must be one that space(trial) suggests for it: Optuna tries a point by
    fixing the suggestions it makes, and would silently drop any other value."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    function = space.define_by_run()  # one import of the file for every point
    for number, point in enumerate(space.start, 1):
        study.enqueue_trial(point)
        trial = study.ask()
        function(trial)
        unused = [name for name in point if name not in trial.params]
        if unused:
            raise UserError(f"START in {str(space.path)!r}: configuration {number} sets {', '.join(unused)}, which "
                            f"space(trial) does not suggest for it, so it would be ignored; suggest it in "
                            f"space(trial) or fix it for every trial in SETTINGS")
        study.tell(trial, 0.0)


def _check_draws(function: DefineByRun, path: Path) -> dict[str, optuna.distributions.BaseDistribution]:
    """Run `space` on a few random Optuna trials; every draw must make a valid TrainConfig. Returns each
    suggested name's distribution in the order first drawn (a name drawn twice keeps its first)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    searched: dict[str, optuna.distributions.BaseDistribution] = {}
    for _ in range(_VALIDATION_DRAWS):
        trial = study.ask()
        try:
            constants = function(trial)
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"space(trial) in {str(path)!r} raised {type(err).__name__}: {err}") from None
        for name in trial.params:
            if name not in field_names():
                raise UserError(f"space(trial) in {str(path)!r} suggests {unknown_key_message(name)}")
            searched.setdefault(name, trial.distributions[name])
        for length in ("epochs", "steps"):  # constants include the fixed values (SETTINGS, --set)
            if length in trial.params or length in constants:
                raise UserError(f"{str(path)!r} sets {length}; a search sets a trial's length with --max-steps "
                                f"or --max-epochs (max_steps or max_epochs in SETTINGS) and ASHA decides how "
                                f"much each trial runs")
        try:
            make_config({**trial.params, **constants})  # as the searcher merges them
        except UserError as err:
            raise UserError(f"space(trial) in {str(path)!r} gives an invalid configuration: {err}") from None
        study.tell(trial, 0.0)
    return searched
