"""Fine-tune pretrained weights: a portfolio of recipes that work first, then TPE over what a dozen trials can learn.

No budget in SETTINGS: a trial's steps are sized by the training set (see docs/budgets.md). Rates are a head
rate and two ratios (layer4 = head x lr_backbone_ratio, each stage below x lr_decay), so a trial's rates are
three numbers whatever its depth, and every trial draws every dimension: TPE models them jointly.
"""

SETTINGS = {"reduction_factor": 3, "trials": 20}

# Tried first and in this order, before TPE draws anything (README: The finetune portfolio says what each
# measured). Each names every searched value, so TPE learns from all four at once.
GENTLE = {"head_init": "probe", "lr_head": 1e-4, "lr_backbone_ratio": 1.0, "lr_decay": 1.0, "bn_mode": "frozen",
          "warmup_steps": 20, "aug_strength": 0.3}
START = [
    # LP-FT (Kumar et al. 2022): a probe head, then every stage at one small rate with batch norm frozen (its
    # statistics are the pretrained ones, not those of batches of 32), after a short warm-up.
    {**GENTLE, "unfreeze_depth": 4},
    {**GENTLE, "unfreeze_depth": 2},  # the same, the top two stages only: less to move on very few images
    # The seed tutorial's recipe (head 1e-3, layer4 1e-4, layer3 5e-5), from a probe head.
    {"unfreeze_depth": 2, "head_init": "probe", "lr_head": 1e-3, "lr_backbone_ratio": 0.1, "lr_decay": 0.5,
     "bn_mode": "train", "warmup_steps": 0, "aug_strength": 0.5},
    # The probe alone: the backbone stays frozen and the probe head trains on gently (cheap, head-only).
    {**GENTLE, "unfreeze_depth": 0, "warmup_steps": 0},
]


def space(trial):
    trial.suggest_int("unfreeze_depth", 0, 4)  # trailing stages trained besides the head
    trial.suggest_categorical("head_init", ["probe", "random"])  # linear probe first (LP-FT), or a random head
    # A probe head is already fitted: Adam steps of 1e-3 and up undo it, so the range reaches 1e-5.
    trial.suggest_float("lr_head", 1e-5, 1e-2, log=True)
    # Drawn at every depth (unused at 0), so the space is the same for every trial.
    trial.suggest_float("lr_backbone_ratio", 0.01, 1.0, log=True)
    trial.suggest_float("lr_decay", 0.1, 1.0, log=True)
    trial.suggest_categorical("bn_mode", ["train", "frozen"])  # frozen keeps the pretrained statistics
    trial.suggest_int("warmup_steps", 0, 50)  # protects pretrained features from the first steps
    trial.suggest_float("aug_strength", 0.0, 1.0)
    # weight_decay (1e-4), label_smoothing (0), mixup, cutmix, random_erasing and ema_decay stay at their
    # defaults: on short small-data runs none gained more than the noise (bench/README.md, Regularisers), and every
    # extra dimension thins a 12-20 trial search (docs/search-spaces.md). A space for long runs can add them.
    return {"optimizer": "adamw", "schedule": "cosine"}  # constants shared by every trial
