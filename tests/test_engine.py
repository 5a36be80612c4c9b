"""The training loop (engine.py): one step per batch through the scaler, non-finite losses, early stopping, the losses."""

import math

import numpy as np
import pytest
import torch

from spermfuse.core import engine
from spermfuse.core.errors import ConfigError
from spermfuse.core.models import create_model


class ExplodingLoss(torch.nn.Module):
    def forward(self, logits, labels):
        return logits.sum() * float("nan")


def test_non_finite_loss_stops_with_a_clear_message():
    model = create_model("resnetv2_tiny", 3)
    batch = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0, 1]))]
    optimizer = engine.build_optimizer("adamw", model.parameters(), 1e-3, 0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(engine.TrainingError, match="non-finite loss"):
        engine.train_one_epoch(model, batch, ExplodingLoss(), optimizer, scaler, torch.device("cpu"))


def test_one_optimizer_step_per_batch():
    model = create_model("resnetv2_tiny", 3)
    optimizer = engine.build_optimizer("adamw", model.parameters(), 1e-3, 0.0)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0, 1]))] * 3
    engine.train_one_epoch(
        model,
        batches,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        torch.amp.GradScaler("cpu", enabled=False),
        torch.device("cpu"),
    )
    assert optimizer.state_dict()["state"][0]["step"].item() == 3


def test_steps_the_scaler_skips_are_counted():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = engine.build_optimizer("adamw", model.parameters(), 1e-3, 0.0)
    batches = [(8 * torch.randn(2, 3, 2, 2), torch.tensor([0, 1]), torch.tensor([0, 1]))] * 6
    # A scale near float32's maximum overflows the scaled gradients: those steps are skipped
    # and each halves the scale (no growth within 1000 steps), until the gradients are finite.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    result = engine.train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), optimizer, scaler, torch.device("cpu"))
    halvings = round(math.log2(2.0**127 / scaler.get_scale()))
    assert 1 <= result.skipped_steps == halvings < 6


def test_bf16_autocast_on_cpu_trains():
    model = create_model("resnetv2_tiny", 3)
    optimizer = engine.build_optimizer("adamw", model.parameters(), 1e-3, 0.0)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0, 1]))]
    dtype = engine.amp_dtype_for(torch.device("cpu"), "on")
    result = engine.train_one_epoch(
        model,
        batches,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        torch.amp.GradScaler("cpu", enabled=False),
        torch.device("cpu"),
        dtype,
        grad_clip=1.0,
    )
    assert dtype == torch.bfloat16 and np.isfinite(result.loss)


def test_early_stopping_counts_epochs_without_improvement():
    stopper = engine.EarlyStopping(patience=2, mode="max")
    assert stopper.step(0.5, 1) and not stopper.step(0.5, 2) and not stopper.should_stop
    assert not stopper.step(0.4, 3) and stopper.should_stop and stopper.best_epoch == 1


def test_keras_loss_normalisation_divides_the_weighted_sum_by_the_batch_size():
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = torch.tensor([0.5, 1.0, 3.0])
    per_cell = torch.nn.functional.cross_entropy(logits, labels, reduction="none") * weight[labels]
    assert engine.CountNormalizedCrossEntropy(weight)(logits, labels).item() == pytest.approx(per_cell.sum().item() / 6)
    pytorch = torch.nn.CrossEntropyLoss(weight=weight)(logits, labels).item()
    assert pytorch == pytest.approx(per_cell.sum().item() / weight[labels].sum().item())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: engine.amp_dtype_for(torch.device("cpu"), "fp8"), "--amp fp8: choose on, off or auto"),
        (lambda: engine.build_optimizer("lion", [torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.0), "--optimizer lion"),
        (lambda: engine.tta_logits(torch.nn.Identity(), torch.zeros(1, 3, 4, 4), "rotate"), "--tta rotate: unknown"),
    ],
)
def test_a_bad_setting_given_to_the_library_is_a_one_line_error_naming_its_flag(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
