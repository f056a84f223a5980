"""Training: linear probe, fine-tuning, checkpoints."""
