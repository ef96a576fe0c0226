"""tuner: hyperparameter search for ResNet transfer learning, on one machine or a Ray cluster."""

__version__ = "0.2.0"  # the one place: pyproject reads it (dynamic version)
