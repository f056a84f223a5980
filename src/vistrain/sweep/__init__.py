"""Hyper-parameter sweeps on Optuna: a search space file, trials that are ordinary training runs."""
