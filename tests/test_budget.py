"""The budget policy (tuner/runs/budget.py): sizes by the dataset, trial rounds, and ASHA's rungs in budget steps."""

import pytest
from ray.tune.schedulers import ASHAScheduler

from tuner.report.page import _rungs
from tuner.runs.budget import (
    HEAD_ONLY_STEPS,
    MAX_PASSES,
    ROUNDS,
    SearchBudget,
    default_steps,
    ran_whole_budget,
    search_budget,
    trial_plan,
)


@pytest.mark.parametrize(("images", "batch", "steps"), [
    (50, 32, MAX_PASSES * 2),  # 2 steps an epoch: 30 passes, far under BiT's 500
    (100, 32, MAX_PASSES * 4),
    (250, 32, MAX_PASSES * 8),
    (640, 32, 500),  # 20 steps an epoch: 30 passes would be 600, over BiT's tier
    (19_999, 32, 500),
    (20_000, 32, 10_000),
    (499_999, 64, 10_000),
    (500_000, 32, 20_000),
    (1_281_167, 256, 20_000),  # ImageNet-1k
])
def test_the_default_budget_is_bits_tier_capped_at_thirty_passes(images, batch, steps):
    assert default_steps(images, batch)[0] == steps


def test_search_budget_by_data_by_steps_and_by_epochs():
    by_data = search_budget(100, 32)
    assert (by_data.steps, by_data.round_steps, by_data.grace_steps) == (120, 120 // ROUNDS, 120 // ROUNDS)
    assert "100 training images" in by_data.reason
    by_steps = search_budget(100, 32, max_steps=300, grace_period=50)
    assert (by_steps.steps, by_steps.round_steps, by_steps.grace_steps) == (300, 50, 50)  # a report every rung
    # --max-epochs keeps its meaning: N epochs of the (fixed) batch size, one report an epoch.
    by_epochs = search_budget(100, 32, max_epochs=6, grace_period=2)
    assert (by_epochs.steps, by_epochs.round_steps, by_epochs.grace_steps) == (24, 4, 8)
    assert search_budget(100, 32, max_steps=5, grace_period=9).grace_steps == 5  # never past the budget


@pytest.mark.parametrize(("budget", "epoch_steps", "head_only", "plan"), [
    # (steps, round_steps), steps an epoch -> (round_epochs, rounds, optimizer steps, per budget step)
    ((120, 13), 4, False, (3, 10, 120, 1)),  # rounds of whole epochs: 12 steps each
    ((60, 6), 2, False, (3, 10, 60, 1)),
    ((500, 55), 20, False, (3, 9, 540, 1)),  # the last round ends past the budget, never before it
    ((10_000, 1111), 3125, False, (1, 4, 12_500, 1)),  # large data: a round is one epoch
    ((120, 13), 4, True, (32, 10, 1280, HEAD_ONLY_STEPS)),  # head-only: ten cheap steps a budget step
])
def test_a_trial_plan_covers_the_budget_in_rounds_of_whole_epochs(budget, epoch_steps, head_only, plan):
    got = trial_plan(SearchBudget(*budget, grace_steps=budget[1], reason=""), epoch_steps, head_only=head_only)
    assert (got.round_epochs, got.rounds, got.steps, got.steps_per_budget_step) == plan
    assert got.budget_spent(got.steps) >= budget[0]
    assert ran_whole_budget(got.budget_spent(got.steps), budget[0])
    assert not ran_whole_budget(got.budget_spent(got.steps - got.round_epochs * epoch_steps),
                                budget[0])


@pytest.mark.parametrize(("steps", "grace", "factor"), [(120, 13, 3), (500, 55, 3), (15, 5, 2), (24, 8, 4)])
def test_the_reports_rungs_are_ashas_milestones(steps, grace, factor):
    """The dotted lines of the report's learning curves are where Ray's ASHA really compares trials."""
    budget = SearchBudget(steps, grace, grace, "")
    asha = ASHAScheduler(time_attr="budget_steps", max_t=steps, grace_period=grace, reduction_factor=factor)
    milestones = sorted(rung[0] for rung in asha._brackets[0]._rungs)
    record = {"settings": {"early_stopping": True, "reduction_factor": factor}, "budget": budget.to_dict()}
    assert _rungs(record) == [m for m in milestones if m < steps]
