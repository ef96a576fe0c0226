"""How long a trial may train, in budget steps, sized by the dataset: the search's budget policy.

Framework-free, in the manner of big_transfer's `bit_hyperrule`: `search_budget` turns the training
set's size (or `--max-steps` / `--max-epochs`) into a SearchBudget, which a trial turns into its rounds
and optimizer steps (train/plan.py: there a budget step is one optimizer step of a trial that runs the
backbone, HEAD_ONLY_STEPS of a head-only one). Budgets count steps, not epochs: with 100 images and
batch 32 an epoch is 4 steps, and a budget of 6 epochs (24 steps) cannot even fit a new head.

A trial reports once per round (whole epochs worth ASHA's first rung, a ninth of the budget unless
--grace-period says otherwise; at least one epoch), and ASHA decides at rounds too: its rungs are in
budget steps, grace x reduction_factor^k (`asha_rungs`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..train.plan import steps_per_epoch

# BiT-HyperRule (Kolesnikov et al. 2020): training images below each bound -> optimizer steps.
BIT_TIERS = ((20_000, 500), (500_000, 10_000), (None, 20_000))
# BiT counts steps of batch 512; at our batch of 32, 500 steps would be 160 passes over a 100-image
# folder. Past about 30 passes a small folder is memorised, not learnt better, so small data is capped
# there, but never below MIN_STEPS: gentle fine-tuning (the finetune portfolio's first prior) was still
# climbing after 120 steps on 100 images (issue 19's held-out task peaked near step 170), and on 50 images
# its val_acc at 60-200 steps sat 3-5 points under its later plateau (bench/transfer.py --variants curve).
MAX_PASSES = 30
MIN_STEPS = 200
ROUNDS = 9  # reports of a trial that runs its whole budget: ASHA's rungs fall on them (rf 3: 1, 3, 9)


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


def default_steps(train_images: int, batch_size: int) -> tuple[int, str]:
    """The budget sized by the dataset: BiT's tier, at most MAX_PASSES epochs but at least MIN_STEPS; and why."""
    tier = next(steps for bound, steps in BIT_TIERS if bound is None or train_images < bound)
    passes = MAX_PASSES * steps_per_epoch(train_images, batch_size)
    if passes < MIN_STEPS:
        return MIN_STEPS, (f"{train_images} training images: at least {MIN_STEPS} steps ({MAX_PASSES} epochs of "
                           f"batch {batch_size} would be {passes})")
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


def ran_whole_budget(spent: int | None, budget_steps: int) -> bool:
    """Whether a trial whose last report spent `spent` budget steps ran all of them (else ASHA or the time
    budget stopped it)."""
    return spent is not None and spent >= budget_steps


def asha_rungs(budget: SearchBudget, reduction_factor: int) -> list[int]:
    """The budget steps below the budget at which ASHA compares trials: grace x reduction_factor^k.

    What Ray's ASHAScheduler holds as its milestones (tests/test_budget.py checks); at the budget itself
    every trial stops anyway, so that milestone decides nothing and is left out.
    """
    rungs, spent = [], budget.grace_steps
    while spent < budget.steps:
        rungs.append(spent)
        spent *= reduction_factor
    return rungs
