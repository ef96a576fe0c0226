"""Fine-tune: unfreeze depth, per-stage learning rates for the stages that train, augmentation, regularisation.

No budget in SETTINGS: a trial's steps are sized by the training set (see README, Budgets).
"""

from tuner.train.config import SEED_RECIPE

STAGES = ("layer4", "layer3", "layer2", "layer1")  # from the top down, as unfreeze_depth counts them

SETTINGS = {"reduction_factor": 3, "trials": 20}

# The seed tutorial's fine-tuning rates as the first trial (its weight_decay 0 lies outside the log range),
# starting from a linear-probe head, the default with pretrained weights.
START = [{**{k: SEED_RECIPE[k] for k in ("unfreeze_depth", "lr_head", "lr_layer4", "lr_layer3")}, "head_init": "probe"}]


def space(trial):
    depth = trial.suggest_int("unfreeze_depth", 0, 4)  # trailing stages trained besides the head
    trial.suggest_categorical("head_init", ["probe", "random"])  # linear probe first (LP-FT), or a random head
    # A probe head is already fitted: Adam steps of 1e-4 and up undo it, so the range reaches 1e-5.
    trial.suggest_float("lr_head", 1e-5, 3e-2, log=True)
    for stage in STAGES[:depth]:  # a rate only where there is something to train
        trial.suggest_float(f"lr_{stage}", 1e-6, 1e-2, log=True)
    trial.suggest_float("aug_strength", 0.0, 1.0)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_float("label_smoothing", 0.0, 0.2)
    # mixup, cutmix, random_erasing and ema_decay are not searched here: on the short small-data runs this
    # space is sized for, each cost accuracy or gained less than the noise in bench/regularisers.py (README:
    # Regularisers), and every extra dimension thins a 12-20 trial search. A space for long runs can add
    # them (README's example).
    return {"optimizer": "adamw", "schedule": "cosine"}  # constants shared by every trial
