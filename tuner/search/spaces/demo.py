"""The quickstart: a small fine-tuning search on the built-in demo data, a few minutes on 2 CPU cores.

The demo data is written to ./demo-data on first use. `weights: auto` takes ImageNet weights when they
are cached or can be downloaded, else random init; the choice is printed and recorded in the results.
Only a space on the built-in demo data may say `auto`.
"""

SETTINGS = {
    "demo_data": True,  # use (and on first use write) the built-in demo data when --data is not given
    "model": "resnet18",  # small and quick on a CPU; the stages are the same as resnet50's
    "weights": "auto",
    "image_size": 64,
    "batch_size": 32,
    "trials": 12,
    "max_epochs": 8,
    # ASHA rungs at epochs 1 and 4, keeping the top quarter at each: most trials cost one epoch.
    "grace_period": 1,
    "reduction_factor": 4,
    "max_concurrent": 2,
}

START = [{"unfreeze_depth": 4, "lr_head": 1e-3, "lr_layer4": 1e-3, "lr_layer3": 1e-3, "aug_strength": 0.2}]


def space(trial):
    depth = trial.suggest_int("unfreeze_depth", 2, 4)
    trial.suggest_float("lr_head", 3e-4, 1e-2, log=True)
    for stage in ("layer4", "layer3", "layer2", "layer1")[:depth]:
        trial.suggest_float(f"lr_{stage}", 1e-4, 3e-3, log=True)
    trial.suggest_float("aug_strength", 0.0, 0.5)
    return {"lr_decay": 1.0}
