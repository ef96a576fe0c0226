"""Delete, while a search runs, the weights no trial will be delivered or resumed from (--keep-checkpoints best).

Ray keeps each trial's best checkpoint by the metric and its latest. Of these, the search may still need:
- the search's best checkpoint (by the metric; ties by trial id, as the export ranks them): best/ delivers it;
- the latest checkpoint of every trial that has not ended (running, waiting, errored): resume continues it;
- under `selection: within_noise`, each trial's best checkpoint that the rule (runs/selection.py) may deliver
  when the search ends, whatever the trials still to come score: all but those ranked below the top trials
  it compares (and not the best probe head), below an ended probe head, or too far below the search's best
  for any trial at least as good to be within noise of them (an exact bound on McNemar's p).
Every other checkpoint loses its weights as soon as this is so: when a trial saves a checkpoint (the one it
saved before may now be neither its best nor its latest) and when a trial ends (completed, stopped early by
ASHA, diverged: nothing resumes it). Its folder stays with its per-image predictions, for the selection's
comparisons, and a WEIGHTS_DELETED record; Ray deletes the folder when it would have, and the export deletes
the ended trials' folders (results.drop_finished_checkpoints).

Either way this deletes nothing that could ever be delivered, so `--keep-checkpoints` never changes which
trial best/ holds: under `highest` a checkpoint below the search's best stays below it, since the best only
rises; under within_noise each reason to delete holds whatever comes later.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from ray import tune

from ..errors import first_line
from ..internals import kept_checkpoints
from ..runs.outcomes import has_result
from ..runs.selection import ALPHA, CANDIDATES, MOST_COMPARISONS, Candidate, may_be_within_noise_of_a_better
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


def weights_to_delete(kept: list[Kept], metric: str, mode: str, selection: str) -> list[tuple[Kept, str]]:
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
            continue
        why = f"below the search's best ({best.score:.4f}, trial {best.trial_id})"
        if selection == "within_noise":
            why = _never_delivered(k, kept, best, metric, mode)
        if why:
            doomed.append((k, why))
    return doomed


def _never_delivered(k: Kept, kept: list[Kept], best: Kept, metric: str, mode: str) -> str | None:
    """Why within_noise can never deliver trial k's best checkpoint, whatever the trials still to come score;
    None when it may. A trial's best only rises and an ended trial's is final, so each reason stays true."""
    sign = -1 if mode == "max" else 1
    rank = (sign * k.score, k.trial_id)
    above = [o for o in kept if o.best and has_result(o.score) and (sign * o.score, o.trial_id) < rank]
    # Ended trials' probe heads are final (a running trial's best may yet move past its probe round).
    ended_probes = [o for o in above if o.ended and o.candidate is not None and o.candidate.is_probe]
    # Below the top the rule still compares the best probe head (selection.compared): k may become it unless
    # an ended trial's probe head ranks above it.
    k_is_probe = k.candidate is not None and k.candidate.is_probe
    if len({o.trial_id for o in above}) >= CANDIDATES and (ended_probes or not k_is_probe):
        return f"{CANDIDATES} trials rank above it: the rule compares only the top {CANDIDATES} and the best probe head"
    if k.candidate is None:
        return None
    # A probe head above k that has ended: compared whenever k is, and the rule delivers nothing below it.
    probes = [o for o in ended_probes if _comparable(o, k) and k.candidate.accuracy < o.candidate.accuracy]
    if probes:
        return f"below the probe head of trial {probes[0].trial_id}, under which the rule delivers nothing"
    # The search's final best is right on at least as many validation images as today's (the metric is
    # their accuracy): if no such classifier can be within noise of k, none ever will be.
    if metric == "val_acc" and _comparable(best, k):
        if not may_be_within_noise_of_a_better(k.candidate, int(best.candidate.correct.sum())):
            return (f"apart from any trial as good as the search's best ({best.score:.4f}, trial {best.trial_id}) "
                    f"on the validation images (McNemar p < {ALPHA} / {MOST_COMPARISONS} at most)")
    return None


def _comparable(a: Kept, b: Kept) -> bool:
    """Both have per-image predictions, over the same images."""
    if a.candidate is None or b.candidate is None:
        return False
    return a.candidate.correct.shape == b.candidate.correct.shape


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
        for k, why in weights_to_delete(kept, self.metric, self.mode, self.selection):
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
