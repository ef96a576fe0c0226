"""The budget policy (tuner/runs/budget.py): sizes by the dataset, and ASHA's rungs in budget steps."""

import pytest
from ray.tune.schedulers import ASHAScheduler

from tuner.runs.budget import MAX_PASSES, MIN_STEPS, ROUNDS, SearchBudget, asha_rungs, default_steps, search_budget


@pytest.mark.parametrize(("images", "batch", "steps"), [
    (50, 32, MIN_STEPS),  # 2 steps an epoch: 30 passes (60 steps) would stop before fine-tuning peaks
    (100, 32, MIN_STEPS),
    (200, 32, MAX_PASSES * 7),  # 7 steps an epoch: 30 passes are 210 steps, over the floor
    (250, 32, MAX_PASSES * 8),
    (640, 32, 500),  # 20 steps an epoch: 30 passes would be 600, over BiT's tier
    (19_999, 32, 500),
    (20_000, 32, 10_000),
    (499_999, 64, 10_000),
    (500_000, 32, 20_000),
    (1_281_167, 256, 20_000),  # ImageNet-1k
])
def test_the_default_budget_is_bits_tier_capped_at_thirty_passes_and_never_under_the_floor(images, batch, steps):
    assert default_steps(images, batch)[0] == steps


def test_search_budget_by_data_by_steps_and_by_epochs():
    by_data = search_budget(100, 32)
    assert (by_data.steps, by_data.round_steps, by_data.grace_steps) == (200, 200 // ROUNDS, 200 // ROUNDS)
    assert by_data.reason == "100 training images: at least 200 steps (30 epochs of batch 32 would be 120)"
    by_steps = search_budget(100, 32, max_steps=300, grace_period=50)
    assert (by_steps.steps, by_steps.round_steps, by_steps.grace_steps) == (300, 50, 50)  # a report every rung
    # --max-epochs keeps its meaning: N epochs of the (fixed) batch size, one report an epoch.
    by_epochs = search_budget(100, 32, max_epochs=6, grace_period=2)
    assert (by_epochs.steps, by_epochs.round_steps, by_epochs.grace_steps) == (24, 4, 8)
    assert search_budget(100, 32, max_steps=5, grace_period=9).grace_steps == 5  # never past the budget


@pytest.mark.parametrize(("steps", "grace", "factor"), [(120, 13, 3), (500, 55, 3), (15, 5, 2), (24, 8, 4)])
def test_the_recorded_rungs_are_ashas_milestones(steps, grace, factor):
    """The rungs tuner.json records (the report's dotted lines) are where Ray's ASHA really compares trials."""
    budget = SearchBudget(steps, grace, grace, "")
    asha = ASHAScheduler(time_attr="budget_steps", max_t=steps, grace_period=grace, reduction_factor=factor)
    milestones = sorted(rung[0] for rung in asha._brackets[0]._rungs)
    assert asha_rungs(budget, factor) == [m for m in milestones if m < steps]
