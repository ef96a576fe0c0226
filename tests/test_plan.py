"""A trial's share of the budget (tuner/train/plan.py): rounds of whole epochs, head-only trials' cheap steps."""

import pytest

from tuner.runs.budget import ran_whole_budget
from tuner.train.plan import HEAD_ONLY_STEPS, trial_plan


@pytest.mark.parametrize(("budget", "epoch_steps", "head_only", "plan"), [
    # (steps, round_steps), steps an epoch -> (round_epochs, rounds, optimizer steps, per budget step)
    ((120, 13), 4, False, (3, 10, 120, 1)),  # rounds of whole epochs: 12 steps each
    ((60, 6), 2, False, (3, 10, 60, 1)),
    ((500, 55), 20, False, (3, 9, 540, 1)),  # the last round ends past the budget, never before it
    ((10_000, 1111), 3125, False, (1, 4, 12_500, 1)),  # large data: a round is one epoch
    ((120, 13), 4, True, (32, 10, 1280, HEAD_ONLY_STEPS)),  # head-only: ten cheap steps a budget step
])
def test_a_trial_plan_covers_the_budget_in_rounds_of_whole_epochs(budget, epoch_steps, head_only, plan):
    got = trial_plan(*budget, epoch_steps, head_only=head_only)
    assert (got.round_epochs, got.rounds, got.steps, got.steps_per_budget_step) == plan
    assert got.budget_spent(got.steps) >= budget[0]
    assert ran_whole_budget(got.budget_spent(got.steps), budget[0])
    assert not ran_whole_budget(got.budget_spent(got.steps - got.round_epochs * epoch_steps),
                                budget[0])
