"""Plain PyTorch training: no Ray, no Optuna. The trainer, its data, model, checkpoints and node cache."""
