"""Warm start (`tuner search --warm-start RUN`): an earlier run's finished trials seed the new Optuna study.

They go in with `study.add_trials`, as finished history (COMPLETE with their best score, PRUNED with their
scores by budget step where ASHA stopped them), rather than `enqueue_trial`-ed to be trained again: their
scores are known, so TPE's first suggestion already uses them (they count towards its startup trials) and
the new search's whole trial budget goes to new configurations. Enqueueing would spend trials re-training
configurations the earlier run already scored; a space file's START is the way to re-run chosen ones.

A trial fits when the new space, replayed with its values, asks for exactly its hyperparameters (none new,
none gone) and each value lies in the new range; it enters with the new space's distributions. Only the
trials the earlier run itself ran are taken (not ones it was warm-started with), and only when it used the
same metric. No Ray here.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..errors import UserError, first_line
from ..internals import in_distribution
from ..runs.run_files import STUDY_FILE, read_run_record
from ..runs.storage import filesystem, is_uri, join
from .space import DefineByRun

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # FAIL: errored or diverged


@dataclass
class WarmStart:
    """What --warm-start RUN takes: the fitting trials (ready for add_trials) and why others were left out."""

    run: str
    taken: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)  # reason -> trials
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        total = len(self.taken) + sum(self.left_out.values())
        text = f"warm start from {self.run}: took {len(self.taken)} of its {total} finished trials"
        if self.left_out:
            reasons = "; ".join(f"{reason}: {count}" for reason, count in sorted(self.left_out.items()))
            text += f", left out {sum(self.left_out.values())} that do not fit this space ({reasons})"
        return "\n".join([text, *(f"  note: {note}" for note in self.notes)])


class _NewParameter(Exception):
    """The replayed space asked for a hyperparameter the earlier trial does not have."""


class _Replay:
    """Answers the space's suggestions with an earlier trial's values and records what was asked, in
    which distribution; stops at the first name the earlier trial lacks. A trial as space(trial) uses one:
    Optuna's suggest_float, suggest_int and suggest_categorical."""

    def __init__(self, params: dict[str, Any]):
        self.given, self.asked = dict(params), {}

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False):
        return self._answer(name, optuna.distributions.FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        return self._answer(name, optuna.distributions.IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices):
        return self._answer(name, optuna.distributions.CategoricalDistribution(choices))

    def _answer(self, name: str, distribution: optuna.distributions.BaseDistribution) -> Any:
        if name not in self.given:
            raise _NewParameter(name)
        self.asked[name] = distribution
        return self.given[name]


def fit(function: DefineByRun, params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the new space's distributions of `params`, None) when they fit the space, else (None, the reason)."""
    replay = _Replay(params)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            function(replay)
    except _NewParameter as new:
        return None, f"{new.args[0]} is new in this space"
    except Exception as err:  # the space cannot even run on these values
        return None, f"the space fails on them ({type(err).__name__})"
    for name, distribution in replay.asked.items():
        if not in_distribution(distribution, params[name]):
            return None, f"{name} out of this space's range"
    gone = sorted(set(params) - set(replay.asked))
    if gone:
        return None, f"{gone[0]} is no longer searched"
    return replay.asked, None


def load_warm_start(run: str, function: DefineByRun, metric: str, fixed: dict[str, Any]) -> WarmStart:
    """Read RUN's record and study; keep the finished trials it ran whose hyperparameters fit `function`."""
    run = run if is_uri(run) else str(Path(run).expanduser().resolve())
    record = read_run_record(run)
    earlier_metric = record["settings"].get("metric")
    if earlier_metric != metric:
        raise UserError(f"--warm-start {run!r} searched {earlier_metric}, this search {metric}: their scores do "
                        f"not compare; pass --metric {earlier_metric} or leave --warm-start out")
    warm = WarmStart(run)
    for trial in _earlier_trials(run):
        if trial.state not in FINISHED or "trial_id" not in trial.user_attrs:
            continue
        distributions, reason = fit(function, trial.params)
        if reason:
            warm.left_out[reason] += 1
            continue
        seed = copy.deepcopy(trial)
        seed.distributions = distributions
        seed.user_attrs = {"warm_start_run": run, "warm_start_trial": trial.user_attrs["trial_id"]}
        seed.system_attrs = {}  # an enqueued START point's fixed_params belong to the earlier study
        warm.taken.append(seed)
    changed = sorted(k for k in {*record["fixed"], *fixed} - {"metric"} if record["fixed"].get(k) != fixed.get(k))
    if changed:
        warm.notes.append("its scores were measured with other fixed hyperparameters: " + ", ".join(
            f"{k} {record['fixed'].get(k)!r} -> {fixed.get(k)!r}" for k in changed))
    return warm


def _earlier_trials(run: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of RUN/optuna.db, read from a copy (the earlier run's file is never written to)."""
    with tempfile.TemporaryDirectory(prefix="tuner-warm-start-") as tmp:
        snapshot = Path(tmp) / STUDY_FILE
        try:
            if is_uri(run):
                fs, path = filesystem(join(run, STUDY_FILE))
                with fs.open_input_stream(path) as source, open(snapshot, "wb") as target:
                    shutil.copyfileobj(source, target)
            else:
                shutil.copyfile(Path(run) / STUDY_FILE, snapshot)
            study = optuna.load_study(study_name=None, storage=f"sqlite:///{snapshot}")
            trials = study.get_trials(deepcopy=False)
        except (OSError, ValueError, KeyError, optuna.exceptions.OptunaError) as err:
            raise UserError(f"--warm-start {run!r}: its {STUDY_FILE} cannot be read ({first_line(err)[:150]}); "
                            f"pass a run folder made by tuner search") from None
        return trials


def seed_study(warm: WarmStart, storage, study_name: str, direction: str) -> None:
    """Create the new search's study with the taken trials first (the searcher then loads it)."""
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction)
    study.add_trials(warm.taken)
