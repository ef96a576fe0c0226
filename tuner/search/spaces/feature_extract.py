"""Feature extraction: the backbone stays frozen; only the new head and its regularisation are searched."""

SETTINGS = {"reduction_factor": 3, "trials": 16}  # the budget is sized by the training set

START = [{"lr_head": 1e-3, "aug_strength": 0.5}]  # the seed tutorial's head-only run, from a probe head


def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-1, log=True)
    # A few strengths, not a range: trials with the same one share the node's cached features
    # (a bank of feature_views augmented views per image, computed once; see the README).
    trial.suggest_categorical("aug_strength", [0.0, 0.25, 0.5, 1.0])
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_float("label_smoothing", 0.0, 0.2)
    return {"unfreeze_depth": 0, "optimizer": "adamw", "schedule": "cosine"}
