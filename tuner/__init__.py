"""tuner: hyperparameter search for ResNet transfer learning, on one machine or a Ray cluster."""

__version__ = "0.1.0"
