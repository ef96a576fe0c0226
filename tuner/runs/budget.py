"""How long a trial trains, in optimizer steps, sized by the dataset: the search's budget policy.

Framework-free, in the manner of big_transfer's `bit_hyperrule`: `search_budget` turns the training
set's size (or `--max-steps` / `--max-epochs`) into a SearchBudget, and `trial_plan` turns that into
one trial's rounds. Budgets count optimizer steps, not epochs: with 100 images and batch 32 an epoch is
4 steps, and a budget of 6 epochs (24 steps) cannot even fit a new head.

A trial reports once per round (whole epochs worth ASHA's first rung, a ninth of the budget unless
--grace-period says otherwise; at least one epoch), and ASHA decides at rounds too: its rungs are in
budget steps, grace x reduction_factor^k. A budget step is one optimizer step of a trial that runs the
backbone; a trial that trains only the head on cached features takes HEAD_ONLY_STEPS optimizer steps
per budget step, because such a step costs about a thousandth of a backbone step (0.3 ms against 350 ms,
ResNet-50 at 32 px on one core), so equal budgets are roughly equal compute and a head-only trial's budget
buys a converged head.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# BiT-HyperRule (Kolesnikov et al. 2020): training images below each bound -> optimizer steps.
BIT_TIERS = ((20_000, 500), (500_000, 10_000), (None, 20_000))
# BiT counts steps of batch 512; at our batch of 32, 500 steps would be 160 passes over a 100-image
# folder. Past about 30 passes a small folder is memorised, not learnt better, so small data is capped
# there (bench/transfer.py measures the curve).
MAX_PASSES = 30
ROUNDS = 9  # reports of a trial that runs its whole budget: ASHA's rungs fall on them (rf 3: 1, 3, 9)
HEAD_ONLY_STEPS = 10  # optimizer steps per budget step for head-only trials on cached features


@dataclass(frozen=True)
class SearchBudget:
    """What every trial of a search may spend, in budget steps, and where ASHA first decides."""

    steps: int  # a trial that ASHA never stops (ASHA's max_t)
    round_steps: int  # one report's worth (the first rung; an epoch with --max-epochs); rounded to whole epochs
    grace_steps: int  # ASHA's first rung: every trial gets this much
    reason: str  # how the budget was chosen, for the start line and tuner.json

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"budget {self.steps} steps a trial ({self.reason}), a report every ~{self.round_steps} steps, "
                f"ASHA's first decision after {self.grace_steps}")


def steps_per_epoch(images: int, batch_size: int) -> int:
    return max(1, math.ceil(images / batch_size))


def default_steps(train_images: int, batch_size: int) -> tuple[int, str]:
    """The budget sized by the dataset: BiT's tier, at most MAX_PASSES epochs; and why."""
    tier = next(steps for bound, steps in BIT_TIERS if bound is None or train_images < bound)
    passes = MAX_PASSES * steps_per_epoch(train_images, batch_size)
    if passes < tier:
        return passes, f"{train_images} training images: {MAX_PASSES} epochs of batch {batch_size}, under BiT's {tier}"
    return tier, f"{train_images} training images: BiT's tier"


def search_budget(train_images: int, batch_size: int, *, max_steps: int | None = None,
                  max_epochs: int | None = None, grace_period: int | None = None) -> SearchBudget:
    """The budget of a search: --max-steps, else --max-epochs (one report an epoch), else sized by the data.

    `grace_period` is in the budget's unit: epochs with `max_epochs`, steps otherwise.
    """
    epoch = steps_per_epoch(train_images, batch_size)
    if max_epochs is not None:
        steps, round_steps = max_epochs * epoch, epoch
        reason = f"--max-epochs {max_epochs} x {epoch} steps of batch {batch_size}"
        grace = epoch * (grace_period if grace_period is not None else 1)
        return SearchBudget(steps, round_steps, min(grace, steps), reason)
    if max_steps is not None:
        steps, reason = max_steps, "--max-steps"
    else:
        steps, reason = default_steps(train_images, batch_size)
    # A round is ASHA's first rung, so every rung (grace x factor^k) falls on a report.
    grace = min(grace_period if grace_period is not None else max(1, steps // ROUNDS), steps)
    return SearchBudget(steps, grace, grace, reason)


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


def trial_plan(budget: SearchBudget, epoch_steps: int, *, head_only: bool) -> TrialPlan:
    """Rounds of whole epochs (so a checkpoint never falls inside an epoch) that cover the budget."""
    per_budget_step = HEAD_ONLY_STEPS if head_only else 1
    round_epochs = max(1, round(budget.round_steps * per_budget_step / epoch_steps))
    rounds = math.ceil(budget.steps * per_budget_step / (round_epochs * epoch_steps))
    return TrialPlan(round_epochs, rounds, rounds * round_epochs * epoch_steps, per_budget_step)


def ran_whole_budget(spent: int | None, budget_steps: int) -> bool:
    """Whether a trial whose last report spent `spent` budget steps ran all of them (else ASHA or the time
    budget stopped it)."""
    return spent is not None and spent >= budget_steps
