"""Which trial a search delivers when its top trials are within noise of each other: numpy only, no Ray.

A search's best val_acc is the maximum over many tries on the same validation images, so it is biased
upward, and on 50-150 images one image is 1-2 points. The rule, in two steps:

1. Which trials are indistinguishable from the best: an exact McNemar test on the images where the
   best and the other trial disagree (Dietterich 1998, "Approximate statistical tests for comparing
   supervised classification learning algorithms", recommends McNemar for two classifiers on one test
   set), its p adjusted by Holm's step-down method (Holm 1979) over the comparisons made; adjusted
   p >= 0.05 keeps the trial. The best is the maximum over the trials, and each comparison is one more
   chance to tell a trial apart by luck: the adjustment holds the chance of telling apart any trial that is
   in truth as good to 5% (a model confidence set, Hansen, Lunde and Nason 2011, in its simplest form). A
   seeded paired bootstrap gives the 95% interval of the accuracy difference, to show how wide the noise is.
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

ALPHA = 0.05  # McNemar's p, Holm-adjusted, below this: the trial is told apart from the best
BOOTSTRAP_RESAMPLES = 2000  # the 95% interval's ends move by well under an image at this count
BOOTSTRAP_SEED = 0
RULES = ("within_noise", "highest")  # the run setting `selection`: this module's rule, or today's maximum
AUTO = "auto"  # the setting's default: chosen by the starting weights (rule_for_weights)
# Trials compared with the best: the top of the ranking by the metric, where a near-tie can be; more would only
# add trials that are plainly worse (or, by chance, look as good: every comparison is a new chance of one).
# The best probe head is compared too (`compared`).
CANDIDATES = 10
# The most comparisons with the best a selection makes (`compared`: the top CANDIDATES and a probe head below
# them). Holm tells apart every trial whose raw p is below ALPHA / MOST_COMPARISONS, whatever the others' p.
MOST_COMPARISONS = CANDIDATES


def rule_for_weights(weights: str) -> tuple[str, str]:
    """The rule `selection: auto` means for a search starting from `weights`, and why.

    Preferring the cheaper of indistinguishable trials is a prior: the fewer stages a trial trained, the
    closer it stays to pretrained features that are known to generalise. From random init there is no such
    prior (a cheaper model is merely less trained), so auto keeps the maximum there. Measured: within_noise
    gained 3.0 and 2.8 points of test_acc in transfer (bench/transfer.py, 6 searches) and lost 5.0 from
    scratch (bench/search.py selection, one search).
    """
    if weights == "none":
        return "highest", ("selection auto -> highest: random init (weights none), where a cheaper trial is only "
                           "less trained")
    return "within_noise", (f"selection auto -> within_noise: pretrained weights ({weights}), so of the trials within "
                            f"noise of the best the cheapest, which stays closest to them")


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
    holm_p: float  # mcnemar_p adjusted by Holm's method over the selection's comparisons (what decides)
    diff_low: float  # 95% paired-bootstrap interval of (this trial's accuracy - the best's)
    diff_high: float
    within_noise: bool  # holm_p >= ALPHA: indistinguishable from the best


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


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the i-th smallest p times (m - i), made
    non-decreasing along that order and capped at 1 (m = len(p_values)). Adjusted p >= ALPHA: not rejected."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def may_be_within_noise_of_a_better(other: Candidate, at_least: int) -> bool:
    """Whether some classifier right on at least `at_least` of these images could be within noise of `other`,
    in any selection: whether McNemar's largest possible p is at least ALPHA / MOST_COMPARISONS (below it,
    Holm tells `other` apart however many comparisons the selection makes).

    Against one with n >= at_least right, the images only it gets right (c) outnumber the images only `other`
    gets right (b) by n - n_other, and b is at most min(n_other, images - n). McNemar's p grows with b at a
    fixed difference and shrinks as the difference grows, so the largest p is at n = at_least, b at its most.
    """
    images, right = other.correct.size, int(other.correct.sum())
    difference = at_least - right
    if difference <= 0:
        return True
    most_b = min(right, images - at_least)
    return mcnemar_p_of_counts(most_b, most_b + difference) >= ALPHA / MOST_COMPARISONS


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


def compare_all(best: Candidate, others: list[Candidate]) -> list[Comparison]:
    """The best against itself, then against each of `others`, Holm-adjusted over those comparisons."""
    p_values = [mcnemar_p(best.correct, other.correct) for other in others]
    comparisons = [Comparison(best.trial_id, best.accuracy, 1.0, 1.0, 0.0, 0.0, True)]
    for other, p, holm_p in zip(others, p_values, holm_adjusted(p_values), strict=True):
        low, high = bootstrap_interval(best.correct, other.correct)
        comparisons.append(Comparison(other.trial_id, other.accuracy, p, holm_p, low, high, holm_p >= ALPHA))
    return comparisons


def select(candidates: list[Candidate], deliverable: set[str] | None = None) -> Selection:
    """The rule of this module over `candidates`, the search's best (by its metric) first; only trials in
    `deliverable` (default: all) may be delivered: the others' weights are gone (search/pruning.py).

    Every candidate's `correct` must cover the same images in the same order (ValueError if the lengths differ).
    """
    best = candidates[0]
    if any(c.correct.shape != best.correct.shape for c in candidates):
        raise ValueError("the candidates' per-image predictions are not over the same validation images")
    comparisons = compare_all(best, candidates[1:])
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
        return (f"trial {best.trial_id} is the best and no other trial is within noise of it (McNemar p, "
                f"Holm-adjusted, < {ALPHA})")
    names = ", ".join(c.trial_id for c in close)
    below = [c.trial_id for c in close if c not in eligible and c.accuracy < floor]
    gone = [c.trial_id for c in close if c not in eligible and c.accuracy >= floor and c is not best]
    guard = (f"; left out below the probe head's accuracy {floor:.4f}: " + ", ".join(below)) if below else ""
    guard += ("; left out, their weights deleted during the search: " + ", ".join(gone)) if gone else ""
    return (f"{len(close)} trials are within noise of the best (McNemar p, Holm-adjusted, >= {ALPHA}): {names}; "
            f"delivered the cheapest, trial {chosen.trial_id} ({chosen.trained_stages} trained stages, "
            f"{chosen.steps} steps){guard}")


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
