"""An exponential moving average of a model's weights (and buffers), for evaluation.

After every optimiser step, shadow <- d * shadow + (1 - d) * weights (floating-point tensors,
BatchNorm statistics included; integer buffers such as BatchNorm's batch count are copied),
with d = min(decay, (1 + t) / (10 + t)) at update t, the warm-up of TensorFlow's
ExponentialMovingAverage: early on the average follows the weights closely instead of
remembering the random initialisation for thousands of steps. Evaluating with the average
instead of the last weights smooths out the noise of the last steps, which with a small
batch (the paper's 8) is large. Choose the decay for the number of steps: its window is
about 1 / (1 - decay) steps (0.999: about half an epoch of the paper's 14,765 images at
batch 8; a CPU demo of 34 steps per epoch wants about 0.97).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class WeightEMA:
    """The moving average of ``model``'s state, starting from its current state."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average; call after every optimiser step."""
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        self.updates += 1
        floating, targets = [], []
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                floating.append(self.shadow[name])
                targets.append(value.detach())
            else:
                self.shadow[name].copy_(value)
        torch._foreach_lerp_(floating, targets, 1.0 - decay)  # one fused kernel per dtype/device, not one per tensor

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Inside the block ``model`` holds the averaged state; its own comes back afterwards."""
        own = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
