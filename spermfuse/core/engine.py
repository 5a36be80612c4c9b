"""The training loop, written out: mixed precision, GradScaler, clipping, early stopping.

One optimiser step per batch through ``scaler.step``; autocast wraps the forward *and*
the loss; ``scaler.unscale_`` before clipping; ``scaler.update()`` after every step.
Steps the scaler skips (inf/NaN gradients, normal early in fp16 training) are counted.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, SpermfuseError

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (batch, batches, images per second)


class TrainingError(SpermfuseError):
    """Training cannot go on (e.g. a non-finite loss); the message says what to change."""


def amp_dtype_for(device: torch.device, amp: str) -> torch.dtype | None:
    """autocast dtype for ``--amp on|off|auto``: fp16 on CUDA, bf16 on CPU, None when off.

    ``auto`` is on for CUDA and off for the CPU (bf16 on CPU is slower than fp32 on most CPUs).
    """
    if amp not in ("on", "off", "auto"):
        raise ConfigError(f"--amp {amp}: choose on, off or auto")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None, cache_enabled: bool = True) -> AbstractContextManager:
    """autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None.

    ``cache_enabled=False`` inside a CUDA graph capture: cached weight casts would be freed after it.
    """
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled) if dtype is not None else nullcontext()


@dataclass
class EpochResult:
    """Sums over one epoch of this process (sums, so they can be all-reduced for DDP)."""

    loss_sum: float
    correct: int
    images: int
    seconds: float
    skipped_steps: int = 0
    stopped_at: int | None = None  # the last step done when a stop was requested mid-epoch

    def state_dict(self) -> dict:
        """The running totals of an epoch stopped mid-way (saved in last.pt to continue it)."""
        return {
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "images": self.images,
            "seconds": self.seconds,
            "skipped_steps": self.skipped_steps,
            "stopped_at": self.stopped_at,
        }

    @property
    def loss(self) -> float:
        """Mean loss per image over the epoch."""
        return self.loss_sum / max(self.images, 1)

    @property
    def accuracy(self) -> float:
        """Share of the epoch's images classified right."""
        return self.correct / max(self.images, 1)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
    progress: Progress | None = None,
    before_step: Callable[[nn.Module], None] | None = None,
    channels_last: bool = False,
    after_step: Callable[[], None] | None = None,
    resume_from: EpochResult | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> EpochResult:
    """One pass over ``loader``: one optimiser step per batch through the scaler.

    ``resume_from``: the totals of this epoch stopped at step ``stopped_at`` (its batches are
    passed over, in the same seeded order); ``stop_requested``: polled after every step, True
    ends the epoch there with ``stopped_at`` set."""
    model.train()
    if before_step is not None:
        before_step(model)  # e.g. keep frozen BatchNorm layers in eval mode
    done = resume_from.stopped_at if resume_from is not None else 0
    total_loss = torch.tensor(resume_from.loss_sum if done else 0.0, device=device, dtype=torch.float64)
    correct = torch.tensor(resume_from.correct if done else 0, device=device, dtype=torch.int64)
    seen, skipped = (resume_from.images, resume_from.skipped_steps) if done else (0, 0)
    earlier_seconds = resume_from.seconds if done else 0.0
    # The scaler backs off exactly when it skipped a step; one read of the scale per step
    # (a host sync on CUDA) tells, against the value the previous step left.
    scale = scaler.get_scale() if scaler.is_enabled() else None
    start = time.perf_counter()
    batches = len(loader)
    for step, (images, labels, _) in enumerate(loader, start=1):
        if step <= done:
            continue
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = criterion(logits, labels)
        # Checked every step (one host sync) so a divergence stops before it reaches the weights.
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss.item()}) at batch {step}; lower --lr or set --grad-clip")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()  # e.g. the weight EMA
        if scale is not None:
            previous, scale = scale, scaler.get_scale()
            skipped += int(scale < previous)
        total_loss += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if progress is not None:
            progress(step, batches, seen / (time.perf_counter() - start + earlier_seconds))
        if stop_requested is not None and stop_requested() and step < batches:
            seconds = time.perf_counter() - start + earlier_seconds
            return EpochResult(total_loss.item(), int(correct.item()), seen, seconds, skipped, stopped_at=step)
    seconds = time.perf_counter() - start + earlier_seconds
    if skipped:
        log.info("GradScaler skipped %d of %d steps (inf/NaN gradients; normal early in fp16)", skipped, batches)
    return EpochResult(total_loss.item(), int(correct.item()), seen, seconds, skipped)


TTA_MODES = ("none", "flip")


def tta_logits(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's logits, averaged over test-time views: ``flip`` = the image, its horizontal
    and its vertical flip (a sperm cell has no preferred side); ``none`` = the image alone."""
    if tta == "none":
        return model(images)
    if tta != "flip":
        raise ConfigError(f"--tta {tta}: unknown; choose one of {', '.join(TTA_MODES)}")
    return (model(images).float() + model(images.flip(-1)).float() + model(images.flip(-2)).float()) / 3.0


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta: str = "none",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (float32), labels and sample indices over ``loader``, model in eval mode (``tta``: :func:`tta_logits`)."""
    was_training = model.training
    model.eval()
    all_logits, all_labels, all_indices = [], [], []
    for images, labels, indices in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = tta_logits(model, images, tta)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
        all_indices.append(indices)
    model.train(was_training)
    if not all_logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_indices)


class CountNormalizedCrossEntropy(nn.Module):
    """Class-weighted cross-entropy as Keras computes it: sum(w_i l_i) / N, where PyTorch's
    ``CrossEntropyLoss(weight=w)`` divides by sum(w_i) (method B's ``loss_normalization="count"``)."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, weight=self.weight, reduction="sum") / len(labels)


def loss_and_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[float, float]:
    """Mean (class-weighted, as in training) cross-entropy and accuracy of logits."""
    if len(labels) == 0:
        return math.nan, math.nan
    loss = F.cross_entropy(logits, labels, weight=weight).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without improvement of the monitored metric."""

    patience: int
    mode: str = "max"  # "max" for accuracy, "min" for loss
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value``; True when it is a new best."""
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs in a row brought no improvement."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {
            "patience": self.patience,
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        self.patience, self.mode = state["patience"], state["mode"]
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


def build_optimizer(name: str, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """adamw (the papers'), adam, or sgd with Nesterov momentum 0.9."""
    parameters = [p for p in parameters if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ConfigError(f"--optimizer {name}: unknown; choose adamw, adam or sgd")
