"""Gradual unfreezing: start head-only, unfreeze one more stage every k epochs, per-stage rates by decay."""

# Epochs, not steps: unfreeze_every counts epochs.
SETTINGS = {"max_epochs": 12, "grace_period": 3, "reduction_factor": 3, "trials": 20}


def space(trial):
    trial.suggest_int("unfreeze_depth", 1, 4)  # how far down the unfreezing goes
    trial.suggest_int("unfreeze_every", 1, 3)  # epochs between two unfreezing steps
    trial.suggest_float("lr_head", 1e-4, 3e-2, log=True)
    trial.suggest_float("lr_decay", 0.05, 0.8, log=True)  # each lower stage trains this much slower
    trial.suggest_float("aug_strength", 0.0, 1.0)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    return {"optimizer": "adamw", "schedule": "cosine", "warmup_steps": 10}
