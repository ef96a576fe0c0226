"""One trial's share of a search's budget: rounds of whole epochs, and the LR schedule's length.

Plain arithmetic, no framework: the search's budget (runs/budget.py) is in budget steps; a trial turns it
into optimizer steps here. A budget step is one optimizer step of a trial that runs the backbone; a trial
that trains only the head on cached features takes HEAD_ONLY_STEPS optimizer steps per budget step,
because such a step costs about a thousandth of a backbone step (0.3 ms against 350 ms, ResNet-50 at
32 px on one core), so equal budgets are roughly equal compute and a head-only trial's budget buys a
converged head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HEAD_ONLY_STEPS = 10  # optimizer steps per budget step for head-only trials on cached features


def steps_per_epoch(images: int, batch_size: int) -> int:
    return max(1, math.ceil(images / batch_size))


@dataclass(frozen=True)
class TrialPlan:
    """One trial's share of the budget: `rounds` reports of `round_epochs` epochs, `steps` optimizer steps."""

    round_epochs: int
    rounds: int
    steps: int  # optimizer steps in all: the LR schedule's length
    steps_per_budget_step: int  # HEAD_ONLY_STEPS for head-only trials on cached features, else 1

    def budget_spent(self, optimizer_steps: int) -> int:
        """Budget steps that `optimizer_steps` of this trial cost (ASHA's time axis)."""
        return optimizer_steps // self.steps_per_budget_step


def trial_plan(budget_steps: int, round_steps: int, epoch_steps: int, *, head_only: bool) -> TrialPlan:
    """Rounds of whole epochs (so a checkpoint never falls inside an epoch) that cover `budget_steps`.

    `round_steps` is the budget steps a report is worth (SearchBudget.round_steps).
    """
    per_budget_step = HEAD_ONLY_STEPS if head_only else 1
    round_epochs = max(1, round(round_steps * per_budget_step / epoch_steps))
    rounds = math.ceil(budget_steps * per_budget_step / (round_epochs * epoch_steps))
    return TrialPlan(round_epochs, rounds, rounds * round_epochs * epoch_steps, per_budget_step)
