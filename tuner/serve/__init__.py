"""Serving a trained model: prediction and export."""
