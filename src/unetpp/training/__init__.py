"""Training: losses, the training loop, checkpoints and exact resume, DDP."""
