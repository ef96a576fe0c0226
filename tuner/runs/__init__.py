"""A run's record, no Ray, no Optuna, no torch: its settings, budget, trial outcomes, run files and storage."""
