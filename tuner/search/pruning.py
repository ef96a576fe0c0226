"""Delete, while a search runs, the weights no trial will be delivered or resumed from (--keep-checkpoints best).

Ray keeps each trial's best checkpoint by the metric and its latest. Of these, the search may still need:
- the search's best checkpoint (by the metric; ties by trial id, as the export ranks them): best/ delivers it;
- the latest checkpoint of every trial that has not ended (running, waiting, errored): resume continues it;
- under `selection: within_noise`, each trial's best checkpoint that is within noise of the search's best on
  the validation images (runs/selection.py): the rule may deliver it.
Every other checkpoint loses its weights as soon as this is so: when a trial saves a checkpoint (the one it
saved before may now be neither its best nor its latest) and when a trial ends (completed, stopped early by
ASHA, diverged: nothing resumes it). Its folder stays with its per-image predictions, for the selection's
comparisons, and a WEIGHTS_DELETED record; Ray deletes the folder when it would have, and the export deletes
the ended trials' folders (results.drop_finished_checkpoints).

Under `highest` (the default) this deletes nothing that could ever be delivered: a checkpoint below the
search's best stays below it, since the best only rises. Under within_noise a later best may be within noise
of a trial whose weights are gone; the rule then chooses among the trials that still hold theirs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from ray import tune

from ..errors import first_line
from ..internals import kept_checkpoints
from ..runs.outcomes import has_result
from ..runs.selection import ALPHA, Candidate, mcnemar_p
from .trainable import checkpoint_candidate, delete_weights

TRIAL_ENDED = "TERMINATED"  # Ray's status of a trial that completed or was stopped (never resumed)


@dataclass(frozen=True)
class Kept:
    """One checkpoint Ray keeps, as the rule sees it."""

    path: str
    trial_id: str
    score: float  # the metric at this checkpoint (NaN: none)
    best: bool  # the trial's best by the metric
    latest: bool  # the trial's latest (a checkpoint may be both)
    ended: bool  # the trial has ended: nothing resumes it
    candidate: Candidate | None = None  # its per-image correctness; only read under within_noise


def search_best(kept: list[Kept], mode: str) -> Kept | None:
    """The checkpoint the export would deliver under `highest`: the best by the metric, ties by trial id."""
    scored = [k for k in kept if k.best and has_result(k.score)]
    sign = -1 if mode == "max" else 1
    return min(scored, key=lambda k: (sign * k.score, k.trial_id), default=None)


def weights_to_delete(kept: list[Kept], mode: str, selection: str) -> list[tuple[Kept, str]]:
    """The checkpoints whose weights no trial will be delivered or resumed from, each with why (the module's
    rule). Nothing before any checkpoint has a score: the best is not known yet."""
    best = search_best(kept, mode)
    if best is None:
        return []
    doomed = []
    for k in kept:
        if k.path == best.path or (k.latest and not k.ended):
            continue
        if not k.best:
            doomed.append((k, "the trial has ended, and this is not its best"))
        elif selection == "within_noise" and _maybe_within_noise(best, k):
            continue
        else:
            doomed.append((k, f"below the search's best ({best.score:.4f}, trial {best.trial_id})"))
    return doomed


def _maybe_within_noise(best: Kept, other: Kept) -> bool:
    """Within noise of the best on the validation images, or not known to be apart (no predictions)."""
    ours, theirs = best.candidate, other.candidate
    if ours is None or theirs is None or ours.correct.shape != theirs.correct.shape:
        return True
    # McNemar alone decides (selection.compare's bootstrap interval is for the summary: 2,000 resamples per
    # checkpoint at every save would be wasted here).
    return mcnemar_p(ours.correct, theirs.correct) >= ALPHA


class CheckpointPruner(tune.Callback):
    """Applies weights_to_delete after each saved checkpoint and each ended trial (runs in the driver)."""

    # What every pruner in this process deleted: Ray runs callbacks in the driver, and after `tuner resume`
    # the pruner is the one Ray unpickled, which the driver holds no reference to. Read by deleted_so_far.
    deleted = {"checkpoints": 0, "bytes": 0}

    def __init__(self, metric: str, mode: str, selection: str):
        self.metric, self.mode, self.selection = metric, mode, selection
        self.done: set[str] = set()  # checkpoint paths whose weights are deleted (or were gone)
        self.predictions: dict[str, Candidate | None] = {}  # by checkpoint path, read once

    def __getstate__(self):  # Ray pickles callbacks with the run: what a new process must look up again
        return {**self.__dict__, "predictions": {}}

    def on_trial_save(self, iteration, trials, trial, **info):
        self._prune_or_warn(trials, None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._prune_or_warn(trials, trial)  # Ray marks it TERMINATED after the callbacks

    def _prune_or_warn(self, trials, ending) -> None:
        """A storage error while deleting must not stop the search (Ray would end it on a callback's error):
        it says so and tries again at the next event; the export's cleanup catches up at the end."""
        try:
            self._prune(trials, ending)
        except OSError as err:
            print(f"warning: could not delete unneeded checkpoint weights ({first_line(err)}); the search goes on "
                  f"and tries again", file=sys.stderr, flush=True)

    def _prune(self, trials, ending) -> None:
        kept, checkpoints = [], {}
        for trial in trials:
            ended = trial is ending or trial.status == TRIAL_ENDED
            for checkpoint, metrics, best, latest in kept_checkpoints(trial):
                if checkpoint.path in self.done:
                    continue
                score = metrics.get(self.metric)
                checkpoints[checkpoint.path] = checkpoint
                kept.append(Kept(checkpoint.path, trial.trial_id, score if has_result(score) else math.nan, best,
                                 latest, ended, self._candidate(checkpoint, metrics, trial.trial_id)))
        for k, why in weights_to_delete(kept, self.mode, self.selection):
            freed = delete_weights(checkpoints[k.path], why)
            self.done.add(k.path)
            CheckpointPruner.deleted["checkpoints"] += bool(freed)
            CheckpointPruner.deleted["bytes"] += freed

    def _candidate(self, checkpoint, metrics: dict, trial_id: str) -> Candidate | None:
        if self.selection != "within_noise":
            return None
        if checkpoint.path not in self.predictions:
            self.predictions[checkpoint.path] = checkpoint_candidate(checkpoint, {**metrics, "trial_id": trial_id},
                                                                     self.metric)
        return self.predictions[checkpoint.path]


def deleted_so_far() -> tuple[int, int]:
    """(checkpoints, bytes) whose weights the pruners of this process deleted."""
    return CheckpointPruner.deleted["checkpoints"], CheckpointPruner.deleted["bytes"]
