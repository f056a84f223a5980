"""Metrics and prediction with a trained model."""
