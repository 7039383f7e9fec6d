"""``evaluating(model)``: eval mode and no autograd for the duration of a generation, then the
model's own train/eval flags back as they were (a LightningModule mid-training stays in training)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module):
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in flags:
            module.training = training
