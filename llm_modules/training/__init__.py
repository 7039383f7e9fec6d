"""Training: optimizers, learning-rate schedules, callbacks."""
