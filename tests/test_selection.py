"""The selection rule (runs/selection.py) on planted per-image predictions, with exact expected winners."""

import io
from math import comb

import numpy as np
import pytest

from tuner.runs.selection import (
    ALPHA,
    CANDIDATES,
    Candidate,
    bootstrap_interval,
    compared,
    holm_adjusted,
    load_candidates,
    mcnemar_p,
    save_candidates,
    select,
)

IMAGES = 100


def planted(best: np.ndarray, *, lost: int, won: int) -> np.ndarray:
    """A trial's correctness that the best gets right and it wrong on `lost` images, the reverse on `won`."""
    other = best.copy()
    right, wrong = np.flatnonzero(best), np.flatnonzero(~best)
    other[right[:lost]] = False
    other[wrong[:won]] = True
    return other


def best_correct(right: int) -> np.ndarray:
    return np.arange(IMAGES) < right


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
    best = best_correct(80)
    other = planted(best, lost=8, won=2)  # 8 and 2 discordant images: p = 2 P(X <= 2), X ~ Bin(10, 1/2)
    assert mcnemar_p(best, other) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375, by hand
    assert mcnemar_p(best, planted(best, lost=10, won=0)) == pytest.approx(2 / 1024)
    assert mcnemar_p(best, best) == 1.0  # no discordant image: nothing tells them apart
    assert mcnemar_p(best, planted(best, lost=3, won=3)) == 1.0  # capped: the two tails overlap


def test_mcnemar_p_matches_the_binomial_sum_for_a_larger_table():
    best = best_correct(80)
    other = planted(best, lost=22, won=10)
    assert mcnemar_p(best, other) == pytest.approx(2 * sum(comb(32, k) for k in range(11)) / 2**32)


def test_bootstrap_interval_is_seeded_and_brackets_the_observed_difference():
    best = best_correct(80)
    other = planted(best, lost=8, won=2)  # other is 6 points worse
    low, high = bootstrap_interval(best, other)
    assert (low, high) == bootstrap_interval(best, other)  # seeded: the same interval every time
    assert (low, high) == (-0.12, 0.0)  # 6 points worse; the 10 discordant images make it -12 to 0 points
    assert bootstrap_interval(best, best) == (0.0, 0.0)


def test_holm_adjusts_each_p_by_its_rank_and_keeps_the_order():
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1: 0.04, 0.09, 0.08 -> 0.09 (never below an earlier one), 0.5.
    assert holm_adjusted([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm_adjusted([0.3, 0.3]) == pytest.approx([0.6, 0.6]) and holm_adjusted([0.7, 0.9]) == [1.0, 1.0]
    assert holm_adjusted([]) == []


def test_the_more_trials_are_compared_the_more_it_takes_to_tell_one_apart():
    """A long search's best is the maximum of more tries: a probe head 8 images behind it (McNemar p 0.021)
    is told apart when it is the only comparison, and within noise, so delivered, among nine (Holm p 0.19)."""
    best = best_correct(80)
    top = Candidate("a", best, stages=3, steps=154)
    probe = Candidate("p", planted(best, lost=9, won=1), stages=0, steps=0)  # p = 2 (1 + 10) / 1024
    tuned = [Candidate(f"t{i}", planted(best, lost=2, won=0), stages=2, steps=66 + i) for i in range(8)]
    alone = select([top, probe])
    assert alone.delivered == "a" and alone.comparisons[1].mcnemar_p == pytest.approx(22 / 1024)
    assert alone.comparisons[1].holm_p == alone.comparisons[1].mcnemar_p and not alone.comparisons[1].within_noise
    among_ten = select([top, *tuned, probe])
    assert among_ten.comparisons[-1].holm_p == pytest.approx(9 * 22 / 1024)  # the smallest p of 9 comparisons
    assert among_ten.delivered == "p" and "Holm-adjusted" in among_ten.reason


def test_a_clear_winner_is_delivered():
    best = best_correct(90)
    candidates = [Candidate("a", best, stages=2, steps=100),
                  Candidate("b", planted(best, lost=20, won=0), stages=0, steps=10)]  # p ~ 2e-6
    selection = select(candidates)
    assert selection.delivered == "a"
    assert [c.trial_id for c in selection.within_noise()] == ["a"]
    assert "no other trial is within noise" in selection.reason
    assert selection.comparisons[1].mcnemar_p < ALPHA and selection.comparisons[1].diff_high < 0


def test_within_noise_the_cheapest_is_delivered():
    best = best_correct(72)
    candidates = [Candidate("a", best, stages=2, steps=100),  # the highest val_acc, 0.72
                  Candidate("b", planted(best, lost=4, won=2), stages=1, steps=200),  # 0.70, p 0.69
                  Candidate("c", planted(best, lost=3, won=1), stages=1, steps=50),  # 0.70, p 0.625: cheapest
                  Candidate("d", planted(best, lost=30, won=0), stages=0, steps=5)]  # 0.42: told apart
    selection = select(candidates)
    assert selection.delivered == "c"
    assert [c.trial_id for c in selection.within_noise()] == ["a", "b", "c"]
    assert "trial c (1 trained stages, 50 steps)" in selection.reason and "a, b, c" in selection.reason
    by_id = {c.trial_id: c for c in selection.comparisons}
    assert by_id["c"].diff_low < 0 < by_id["c"].diff_high  # the interval holds no difference
    assert by_id["a"].mcnemar_p == 1.0 and by_id["a"].accuracy == 0.72


def test_equal_cost_goes_to_the_higher_accuracy():
    best = best_correct(72)
    candidates = [Candidate("a", best, stages=2, steps=100),
                  Candidate("b", planted(best, lost=4, won=2), stages=1, steps=50),  # 0.70
                  Candidate("c", planted(best, lost=3, won=2), stages=1, steps=50)]  # 0.71
    assert select(candidates).delivered == "c"


def test_a_probe_head_within_noise_is_delivered():
    best = best_correct(72)
    candidates = [Candidate("a", best, stages=2, steps=100),
                  Candidate("p", planted(best, lost=3, won=1), stages=0, steps=0)]  # the probe round
    assert select(candidates).delivered == "p"


def test_a_probe_head_counts_no_trained_stage_whatever_its_trials_depth():
    best = best_correct(72)
    candidates = [Candidate("a", best, stages=2, steps=100),
                  Candidate("h", planted(best, lost=2, won=0), stages=1, steps=20),  # layer4 and the head, 20 steps
                  Candidate("p", planted(best, lost=3, won=1), stages=3, steps=0)]  # a depth-3 trial's probe round
    selection = select(candidates)
    assert selection.delivered == "p" and "trial p (0 trained stages, 0 steps)" in selection.reason


def test_never_a_trial_below_the_probe_head():
    best = best_correct(80)
    # The probe is told apart from the best (10 losses, no wins: p 0.002) but still scores 0.70;
    # x loses 22 and wins 10 (p 0.0501: within noise) and is cheaper than a, but scores 0.68 < 0.70.
    probe = planted(best, lost=10, won=0)
    x = planted(best, lost=22, won=10)
    candidates = [Candidate("a", best, stages=2, steps=100), Candidate("p", probe, stages=0, steps=0),
                  Candidate("x", x, stages=1, steps=30)]
    selection = select(candidates)
    assert [c.trial_id for c in selection.within_noise()] == ["a", "x"]
    assert selection.delivered == "a"
    assert "left out below the probe head's accuracy 0.7000: x" in selection.reason
    # Without the probe among the candidates, x is the cheapest within noise.
    assert select([candidates[0], candidates[2]]).delivered == "x"


def test_the_best_probe_head_is_compared_even_below_the_top_trials():
    best = best_correct(80)
    tuned = [Candidate(f"t{i:02d}", planted(best, lost=i, won=0), stages=2, steps=100) for i in range(CANDIDATES + 2)]
    probes = [Candidate("p", planted(best, lost=12, won=0), stages=0, steps=0),
              Candidate("q", planted(best, lost=15, won=0), stages=0, steps=0)]
    ranked = [*tuned, *probes]  # best first: both probe heads below the top
    assert [c.trial_id for c in compared(ranked)] == [c.trial_id for c in tuned[:CANDIDATES]] + ["p"]
    in_top = [*tuned[:3], probes[1], *tuned[3:]]  # a probe head among the top: the top alone
    assert compared(in_top) == in_top[:CANDIDATES]
    assert compared(tuned) == tuned[:CANDIDATES]  # no probe head at all
    # A probe head below the top and within noise of the best (4 losses: p 0.125) is the cheapest: delivered.
    probe = Candidate("r", planted(best, lost=4, won=0), stages=0, steps=0)
    assert select(compared([*tuned, probe])).delivered == "r"


def test_candidates_over_different_images_are_refused():
    with pytest.raises(ValueError, match="not over the same validation images"):
        select([Candidate("a", best_correct(5)[:10], 1, 1), Candidate("b", best_correct(5)[:9], 1, 1)])


def test_candidates_are_recorded_and_read_back_without_pickle(tmp_path):
    best = best_correct(72)
    candidates = [Candidate("a", best, stages=2, steps=100, score=0.72),
                  Candidate("p", planted(best, lost=3, won=1), stages=0, steps=0, score=0.70)]
    path = tmp_path / "val_predictions.npz"
    with open(path, "wb") as handle:
        save_candidates(handle, candidates)
    loaded = load_candidates(path)
    assert [(c.trial_id, c.stages, c.steps, c.score) for c in loaded] == [("a", 2, 100, 0.72), ("p", 0, 0, 0.70)]
    assert all(np.array_equal(c.correct, d.correct) for c, d in zip(loaded, candidates, strict=True))
    assert select(loaded).delivered == select(candidates).delivered
    path.write_bytes(path.read_bytes()[:50])  # a damaged file reads as no record
    assert load_candidates(path) == [] and load_candidates(tmp_path / "missing.npz") == []
    assert load_candidates(io.BytesIO(b"not a zip")) == []


def test_a_checkpoints_predictions_read_back_and_a_damaged_file_reads_as_none(tmp_path):
    """trainable.save_predictions / load_predictions: what the selection reads from each trial checkpoint."""
    import torch
    from ray import tune

    from tuner.search.trainable import PREDICTIONS, load_predictions, save_predictions
    from tuner.train.evaluation import ImagePredictions

    kept = ImagePredictions(torch.tensor([1, 0, 2]), torch.tensor([0.5, 0.2, 0.9]), torch.tensor([1, 1, 2]))
    save_predictions(kept, tmp_path / PREDICTIONS)
    checkpoint = tune.Checkpoint.from_directory(str(tmp_path))
    loaded = load_predictions(checkpoint)
    assert loaded["predicted"].tolist() == [1, 0, 2] and loaded["label"].tolist() == [1, 1, 2]
    assert loaded["true_prob"].tolist() == pytest.approx([0.5, 0.2, 0.9])
    path = tmp_path / PREDICTIONS
    path.write_bytes(path.read_bytes()[:-30])  # cut short
    assert load_predictions(checkpoint) is None
    path.unlink()  # a checkpoint from before predictions were saved
    assert load_predictions(checkpoint) is None


def test_the_delivered_trial_and_its_reason_are_read_from_best_metrics(tmp_path):
    """results.delivered_trial: what a step after the search (a refit) asks for."""
    import json

    from tuner.search.results import delivered_trial

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "metrics.json").write_text(json.dumps({"trial_id": "c", "selection": "why", "val_acc": 0.7}))
    assert delivered_trial(tmp_path) == ("c", "why")
