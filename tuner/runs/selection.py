"""Which trial a search delivers when its top trials are within noise of each other: numpy only, no Ray.

A search's best val_acc is the maximum over many tries on the same validation images, so it is biased
upward, and on 50-150 images one image is 1-2 points. The rule, in two steps:

1. Which trials are indistinguishable from the best: an exact McNemar test on the images where the
   best and the other trial disagree (Dietterich 1998, "Approximate statistical tests for comparing
   supervised classification learning algorithms", recommends McNemar for two classifiers on one test
   set); p >= 0.05 keeps the trial. A seeded paired bootstrap gives the 95% interval of the accuracy
   difference, to show how wide the noise is.
2. Of those, deliver the cheapest: fewest trained stages, then fewest optimizer steps, then the higher
   accuracy. This is the one-standard-error rule of Breiman et al. (1984, CART) and Hastie, Tibshirani
   and Friedman (ESL 2009, 7.10): among models whose scores are within noise of the best, take the
   simplest; picking the maximum of noisy scores overfits the validation set (Cawley and Talbot 2010,
   JMLR 11). Fewer trained stages means fewer weights fitted to the training images, and a cheaper refit;
   a probe head (step 0) has trained none, whatever depth its trial goes on to unfreeze.

Guard: never deliver a trial whose accuracy is below the best probe head among the candidates (a
probe round, step 0: the head fitted on the frozen backbone), as fine-tuning that does worse on these
very images than the head it started from has not earned its cost.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # McNemar's p below this: the trial is told apart from the best
BOOTSTRAP_RESAMPLES = 2000  # the 95% interval's ends move by well under an image at this count
BOOTSTRAP_SEED = 0
RULES = ("within_noise", "highest")  # the run setting `selection`: this module's rule, or today's maximum
# Trials compared with the best: the top of the ranking by the metric, where a near-tie can be; more would only
# add trials that are plainly worse (or, by chance, look as good: every comparison is a new chance of one).
# The best probe head is compared too (`compared`).
CANDIDATES = 10


@dataclass(frozen=True)
class Candidate:
    """A trial's best checkpoint: what it cost and which validation images it gets right (in split order)."""

    trial_id: str
    correct: np.ndarray  # bool, one per validation image, in the order of the split's samples
    stages: int  # trained backbone stages at that checkpoint (unfrozen_stages)
    steps: int  # optimizer steps taken (0: the probe head)
    score: float = math.nan  # the search's metric at that checkpoint (what ranks the candidates)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.correct.size else 0.0

    @property
    def is_probe(self) -> bool:
        return self.steps == 0

    @property
    def trained_stages(self) -> int:
        """What the cost counts: a probe head has trained no stage yet, whatever depth its trial unfreezes."""
        return 0 if self.is_probe else self.stages


@dataclass(frozen=True)
class Comparison:
    """One trial against the best on the same images."""

    trial_id: str
    accuracy: float
    mcnemar_p: float  # exact McNemar, two-sided; 1.0 for the best itself
    diff_low: float  # 95% paired-bootstrap interval of (this trial's accuracy - the best's)
    diff_high: float
    within_noise: bool  # p >= ALPHA: indistinguishable from the best


@dataclass(frozen=True)
class Selection:
    """The delivered trial, why, and every candidate's comparison with the best (the best first)."""

    delivered: str
    reason: str
    comparisons: list[Comparison]

    def within_noise(self) -> list[Comparison]:
        """The candidates indistinguishable from the best, the best included."""
        return [c for c in self.comparisons if c.within_noise]


def mcnemar_p(best: np.ndarray, other: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two classifiers' per-image correctness (bool arrays, same images).

    Under "equally accurate" each discordant image is a fair coin: p = 2 P(X <= min(b, c)), X ~ Bin(b + c, 1/2).
    """
    return mcnemar_p_of_counts(int(np.sum(best & ~other)), int(np.sum(~best & other)))


def mcnemar_p_of_counts(b: int, c: int) -> float:
    """mcnemar_p from the discordant counts: b images only the first gets right, c only the second."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def may_be_within_noise_of_a_better(other: Candidate, at_least: int) -> bool:
    """Whether some classifier right on at least `at_least` of these images could be within noise of `other`.

    Against one with n >= at_least right, the images only it gets right (c) outnumber the images only `other`
    gets right (b) by n - n_other, and b is at most min(n_other, images - n). McNemar's p grows with b at a
    fixed difference and shrinks as the difference grows, so the largest p is at n = at_least, b at its most.
    """
    images, right = other.correct.size, int(other.correct.sum())
    difference = at_least - right
    if difference <= 0:
        return True
    most_b = min(right, images - at_least)
    return mcnemar_p_of_counts(most_b, most_b + difference) >= ALPHA


def bootstrap_interval(best: np.ndarray, other: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile interval of accuracy(other) - accuracy(best), resampling images (the pairs kept)."""
    rng = np.random.default_rng(seed)
    diff = other.astype(float) - best.astype(float)
    draws = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compared(ranked: list[Candidate]) -> list[Candidate]:
    """The candidates the rule compares, from all of them ranked best first: the top CANDIDATES, and the best
    probe head when none of those is one. The probe head is the baseline every fine-tuning must beat (the
    guard in `select`); in a long search, trials that beat it by chance alone can push it below the top
    (on bench/transfer.py, 40 trials at 10 images a class left it out where 12 did not)."""
    top = ranked[:CANDIDATES]
    probe = next((c for c in ranked[CANDIDATES:] if c.is_probe), None)
    return top if probe is None or any(c.is_probe for c in top) else [*top, probe]


def compare(best: Candidate, other: Candidate) -> Comparison:
    if other is best:
        return Comparison(best.trial_id, best.accuracy, 1.0, 0.0, 0.0, True)
    p = mcnemar_p(best.correct, other.correct)
    low, high = bootstrap_interval(best.correct, other.correct)
    return Comparison(other.trial_id, other.accuracy, p, low, high, p >= ALPHA)


def select(candidates: list[Candidate], deliverable: set[str] | None = None) -> Selection:
    """The rule of this module over `candidates`, the search's best (by its metric) first; only trials in
    `deliverable` (default: all) may be delivered: the others' weights are gone (search/pruning.py).

    Every candidate's `correct` must cover the same images in the same order (ValueError if the lengths differ).
    """
    best = candidates[0]
    if any(c.correct.shape != best.correct.shape for c in candidates):
        raise ValueError("the candidates' per-image predictions are not over the same validation images")
    comparisons = [compare(best, c) for c in candidates]
    close = [c for c, comparison in zip(candidates, comparisons, strict=True) if comparison.within_noise]
    probes = [c.accuracy for c in candidates if c.is_probe]
    floor = max(probes) if probes else -math.inf
    eligible = [c for c in close if c.accuracy >= floor and (deliverable is None or c.trial_id in deliverable)]
    eligible = eligible or [best]
    chosen = min(eligible, key=lambda c: (c.trained_stages, c.steps, -c.accuracy))
    return Selection(chosen.trial_id, _reason(chosen, best, close, eligible, floor), comparisons)


def _reason(chosen: Candidate, best: Candidate, close: list[Candidate], eligible: list[Candidate],
            floor: float) -> str:
    if len(close) == 1:
        return f"trial {best.trial_id} is the best and no other trial is within noise of it (McNemar p < {ALPHA})"
    names = ", ".join(c.trial_id for c in close)
    below = [c.trial_id for c in close if c not in eligible and c.accuracy < floor]
    gone = [c.trial_id for c in close if c not in eligible and c.accuracy >= floor and c is not best]
    guard = (f"; left out below the probe head's accuracy {floor:.4f}: " + ", ".join(below)) if below else ""
    guard += ("; left out, their weights deleted during the search: " + ", ".join(gone)) if gone else ""
    return (f"{len(close)} trials are within noise of the best (McNemar p >= {ALPHA}): {names}; delivered the "
            f"cheapest, trial {chosen.trial_id} ({chosen.trained_stages} trained stages, {chosen.steps} steps){guard}")


def save_candidates(handle, candidates: list[Candidate]) -> None:
    """Write the candidates to a binary file `handle` (RUN/val_predictions.npz), so that a later export
    compares trials whose checkpoints were deleted (--keep-checkpoints best) as the first did. No pickle."""
    np.savez(handle, trial_id=np.array([c.trial_id for c in candidates], dtype=str),
             correct=np.array([c.correct for c in candidates], dtype=bool),
             stages=np.array([c.stages for c in candidates], dtype=np.int64),
             steps=np.array([c.steps for c in candidates], dtype=np.int64),
             score=np.array([c.score for c in candidates], dtype=np.float64))


def load_candidates(path) -> list[Candidate]:
    """The candidates save_candidates wrote; [] when the file is missing or does not read back whole."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            columns = [saved[name] for name in ("trial_id", "correct", "stages", "steps", "score")]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return []
    return [Candidate(str(t), c, int(st), int(sp), float(sc)) for t, c, st, sp, sc in zip(*columns, strict=True)]
