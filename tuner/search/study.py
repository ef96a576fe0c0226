"""The search's Optuna study behind Ray Tune's public Searcher interface, asked and told through Optuna's
public ask/tell API.

The study lives in the run: RUN/optuna.db, or for a run at a URI a node-local file (SQLite needs a local
file) whose snapshot travels in the searcher state Ray keeps with the run, so a new head node resumes it.
Ray pickles the searcher for `tuner resume`; the pickle holds the study's name and what Optuna was told,
never a connection to a file, so a moved or copied run reopens the study where the run is now.

What Optuna is told matches trials.parquet (agree_with_table): a trial that ran its whole budget is
COMPLETE with its best round's value; one that ASHA or the time budget stopped is PRUNED (TPE then ranks
it by how far it got, not as a full trial); one that errored stays RUNNING while a resume may continue it
from its checkpoint and is FAIL once the search has ended; an interrupted trial stays RUNNING.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from ..internals import running_trial
from ..runs.outcomes import NUMBER, has_result, optuna_state, trial_status
from ..runs.run_files import STUDY_FILE
from ..runs.storage import is_uri
from ..train.cache import cache_root
from ..train.config import is_better

optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO lines (a study loaded by its only name) are noise


def study_path(run: str) -> Path:
    """Where the run's study lives while it runs: RUN/optuna.db, or for a run at a URI a node-local file that
    export copies into the run folder."""
    if not is_uri(run):
        return Path(run) / STUDY_FILE
    return cache_root() / "studies" / hashlib.sha256(run.encode()).hexdigest()[:16] / STUDY_FILE


def study_storage(run: str) -> optuna.storages.RDBStorage:
    path = study_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def direction(mode: str) -> str:
    return "maximize" if mode == "max" else "minimize"


class StudySearcher(Searcher):
    """TPE over the run's study: START's configurations first and in order, then the sampler's.

    `space` is the define-by-run function (space.DefineByRun: the space file's space(trial) plus the fixed
    values); `start` the configurations to try first; `budget_steps` the search's budget, by which a trial
    that ended is told COMPLETE (ran it all) or PRUNED (stopped early). `run` is the run's location: the
    driver sets it again after a restore (the run may have moved).
    """

    def __init__(self, space, *, metric: str, mode: str, start: Iterable[Mapping[str, Any]], sampler,
                 study_name: str, run: str, budget_steps: int, stopped_as_complete: bool = False):
        super().__init__(metric=metric, mode=mode)
        self.run, self.study_name = run, study_name
        self._space, self._sampler, self._start = space, sampler, [dict(point) for point in start]
        self._budget_steps, self._stopped_as_complete = budget_steps, stopped_as_complete
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number, in the order suggested
        self._best: dict[str, float] = {}  # a trial's best round so far: what a COMPLETE trial is told
        self._reported: dict[str, set[int]] = {}  # budget steps already reported as intermediate values
        self._told: set[str] = set()  # trials whose end Optuna has been told
        self._enqueued = False  # START went into the study (once, when the search began)
        self._snapshot: bytes | None = None  # a URI run's study file, as saved with the search state
        self._study: optuna.Study | None = None  # this process's connection; never pickled

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_study"] = None
        if is_uri(self.run) and study_path(self.run).is_file():
            state["_snapshot"] = study_path(self.run).read_bytes()  # written between two tells: consistent
        return state

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))

    @property
    def study(self) -> optuna.Study:
        """The run's study, opened where the run is now (a URI run's from its snapshot on a new node)."""
        if self._study is None:
            path = study_path(self.run)
            if is_uri(self.run) and self._snapshot is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(self._snapshot)  # the run's copy counts; a node's cache only caches
                os.replace(tmp, path)
            self._study = optuna.create_study(storage=study_storage(self.run), sampler=self._sampler,
                                              study_name=self.study_name, direction=direction(self.mode),
                                              load_if_exists=True)
            if not self._enqueued:  # a new search: the portfolio goes first, in order
                for point in self._start:
                    self._study.enqueue_trial(point, skip_if_exists=False)
                self._enqueued = True
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any]:
        """The trial's configuration, with its NUMBER (not a hyperparameter: the trainable takes it out)."""
        if trial_id not in self._numbers:
            trial = self.study.ask()
            trial.set_user_attr("trial_id", trial_id)
            self._numbers[trial_id] = trial.number
            trial.set_user_attr(NUMBER, self.trial_number(trial_id))
        trial = running_trial(self.study, self._numbers[trial_id])
        constants = self._space(trial)  # suggests through `trial`; a trial asked before suggests the same again
        return {**trial.params, **constants, NUMBER: self.trial_number(trial_id)}

    def trial_number(self, trial_id: str) -> int:
        """1, 2, 3 in the order the search created its trials: the trial's place among the ids this searcher
        has suggested, which its pickled state keeps across `tuner resume` (restored trials are not suggested
        again; new ones go on counting). Not the study's trial number: warm-start seeds and a failed trial
        that a resume continues take study numbers too."""
        return list(self._numbers).index(trial_id) + 1

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._numbers and trial_id not in self._told and not self._finished_in_study(trial_id):
            self._observe(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._numbers or trial_id in self._told or self._finished_in_study(trial_id):
            return
        if result:
            self._observe(trial_id, result)  # the round Ray stops a trial at never reaches on_trial_result
        if error:
            return  # stays RUNNING: `tuner resume` continues it from its checkpoint (agree_with_table ends it)
        value = self._best.get(trial_id)
        status = trial_status(result or {}, self._budget_steps, failed=False, ended=True)
        tell(self.study, self._numbers[trial_id], optuna_state(status, value, self._stopped_as_complete), value)
        self._told.add(trial_id)

    def _finished_in_study(self, trial_id: str) -> bool:
        """Told already by an earlier process (agree_with_table, at an earlier export); a trial told FAIL that
        `tuner resume` continues from its checkpoint goes on as a new study trial (`continues` names the
        failed one's number): Optuna never takes a FAIL back."""
        trial = self.study.get_trials(deepcopy=False)[self._numbers[trial_id]]
        if trial.state == TrialState.FAIL:
            again = optuna.trial.create_trial(state=TrialState.RUNNING, params=trial.params,
                                              distributions=trial.distributions,
                                              user_attrs={**trial.user_attrs, "continues": trial.number})
            self.study.add_trial(again)
            self._numbers[trial_id] = len(self.study.get_trials(deepcopy=False)) - 1
            self._reported.pop(trial_id, None)
            return False
        if trial.state.is_finished():
            self._told.add(trial_id)
        return trial.state.is_finished()

    def _observe(self, trial_id: str, result: dict) -> None:
        """One round: an intermediate value at its budget step, and the trial's best so far."""
        value, step = result.get(self.metric), result.get("budget_steps")
        if not has_result(value) or step is None:
            return  # a diverged round's NaN is no intermediate value
        reported = self._reported.setdefault(trial_id, set())
        if int(step) not in reported:  # a round trained again after a resume reports its step again
            running_trial(self.study, self._numbers[trial_id]).report(value, int(step))
            reported.add(int(step))
        if is_better(self.mode, value, self._best.get(trial_id)):
            self._best[trial_id] = value


def ended_trials(run: str) -> set[str]:
    """Ray trial ids whose end the run's study has been told (COMPLETE, PRUNED or FAIL)."""
    path = study_path(run)
    if not path.is_file():
        return set()
    return {trial_id for trial_id, state, _ in _tagged(run) if state.is_finished()}


def _tagged(run: str) -> list[tuple[str, TrialState, float | None]]:
    """(Ray trial id, state, value) of each study trial that a Ray trial ran (warm-start seeds have none), in
    order: a trial that failed and went on after a resume has two, the later one counts."""
    study = optuna.load_study(study_name=None, storage=study_storage(run))
    return [(trial.user_attrs["trial_id"], trial.state, trial.value) for trial in study.get_trials(deepcopy=False)
            if "trial_id" in trial.user_attrs]


def tell(study: optuna.Study, number: int, state: str, value: float | None) -> None:
    """Tell the study how its trial `number` ended: `state` a TrialState's name (outcomes.optuna_state)."""
    study.tell(number, value if state == "COMPLETE" else None, state=TrialState[state])


def agree_with_table(run: str, rows: list[dict[str, Any]], metric: str, stopped_as_complete: bool = False, *,
                     ended: bool = True) -> None:
    """Tell the study how each trial of trials.parquet ended where it has not been told (a time-budget stop,
    an error that no resume continued, a trial that spent its budget just before an interruption); interrupted
    trials stay RUNNING. Once the search has `ended`, also fail the trials the study asked that Ray never ran
    (a driver killed between the two records)."""
    if not study_path(run).is_file():
        return
    study = optuna.load_study(study_name=None, storage=study_storage(run))
    by_id = {row["trial_id"]: row for row in rows}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        row = by_id.get(trial.user_attrs.get("trial_id"))
        if row is None and not ended:
            continue
        state = "FAIL" if row is None else optuna_state(row["status"], row.get(metric), stopped_as_complete)
        if state is not None:
            tell(study, trial.number, state, None if row is None else row.get(metric))
