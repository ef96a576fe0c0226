"""Which hyperparameters mattered: Optuna's importances over the search's own study, else its trials table.

Optuna is imported only when importances are asked for; the run's RUN/optuna.db is read through a
snapshot, never opened for writing.
"""

from __future__ import annotations

import sqlite3
import tempfile
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ..errors import first_line
from ..runs.run_files import STUDY_FILE
from .run import RunData, ranked


@dataclass
class Importance:
    values: dict[str, float] | None  # name -> importance, most important first; None: not computed
    source: str  # what the numbers come from
    note: str = ""  # why there are none, or the evaluator's caveats


def param_importances(run: RunData) -> Importance:
    """Optuna's importances (PED-ANOVA, Optuna's default) from RUN/optuna.db, else from the trials table."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tuner-optuna-") as tmp:
        return _importances(run, *_stored_study(run, Path(tmp) / STUDY_FILE))


def _importances(run: RunData, study, source: str) -> Importance:
    import optuna

    if study is None:
        study = _study_from_table(run)
        source = (f"an in-memory Optuna study of the trials table ({run.metric}: each trial's best epoch)"
                  + (f"; {source}" if source else ""))
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = _varied_params(completed)
    if len(completed) < 2:
        return Importance(None, source, f"only {len(completed)} trial(s) with a result; importance needs 2 or more")
    if len(varied) < 2:
        what = f"only {varied[0]} varies" if varied else "no hyperparameter varies"
        return Importance(None, source, f"{what} across the trials, so there is nothing to compare")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = optuna.importance.get_param_importances(study, params=varied)
    caveats = list(dict.fromkeys(str(w.message) for w in caught))
    if any("same set of trials" in c for c in caveats):  # every parameter would get the same share
        return Importance(None, source, f"too few trials ({len(completed)}) to tell the hyperparameters apart")
    return Importance(dict(values), source, " ".join(caveats))


def read_study(run: RunData, snapshot: Path):
    """The search's own study, read from a `snapshot` of RUN/optuna.db (the run's file is never opened
    for writing); (None, why) when it is missing or unreadable."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not its INFO line on loading the only study
    db = run.fetch(STUDY_FILE)
    if db is None:
        return None, "RUN/optuna.db is not there"
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as reader, \
                closing(sqlite3.connect(snapshot)) as copy:
            reader.backup(copy)  # a consistent copy even while the search writes to the file
        return optuna.load_study(study_name=None, storage=f"sqlite:///{snapshot}"), None
    except Exception as err:  # several studies, an old schema, a corrupt file: use the table instead
        return None, f"RUN/optuna.db could not be read ({first_line(err)[:120]})"


def _stored_study(run: RunData, snapshot: Path):
    """The search's own study (read_study), or (None, why) when it is missing or not yet useful."""
    import optuna

    study, why = read_study(run, snapshot)
    if study is None:
        return None, why
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2 or not _varied_params(completed):
        return None, f"RUN/optuna.db has {len(completed)} completed trial(s), too few or none that differ"
    return study, f"the search's Optuna study (RUN/optuna.db, {len(completed)} completed trials)"


def _varied_params(trials) -> list[str]:
    values: dict[str, set] = {}
    for trial in trials:
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(value)
    return [name for name, seen in values.items() if len(seen) > 1]


def _study_from_table(run: RunData):
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    rows = [t for t in ranked(run) if t["status"] != "errored"]
    distributions, log_scaled = {}, run.log_scaled
    for name in run.searched:
        values = [r[name] for r in rows if r.get(name) is not None]
        if not values:
            continue
        if all(isinstance(v, (bool, str)) for v in values):
            distributions[name] = CategoricalDistribution(sorted(set(values), key=str))
        elif all(isinstance(v, int) for v in values):
            distributions[name] = IntDistribution(min(values), max(values))
        else:
            distributions[name] = FloatDistribution(min(values), max(values),
                                                    log=name in log_scaled and min(values) > 0)
    study = optuna.create_study(direction="maximize" if run.mode == "max" else "minimize")
    for row in rows:
        params = {n: row[n] for n in distributions if row.get(n) is not None}
        study.add_trial(optuna.trial.create_trial(params=params, value=row[run.metric],
                                                  distributions={n: distributions[n] for n in params}))
    return study
