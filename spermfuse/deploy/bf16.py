"""bf16 deployment (``fuse.py --export DIR --precision bf16``): the fused model traced under
PyTorch's CPU autocast to bfloat16 into ``model_bf16.pt2``, and run under it with the input in
channels-last memory format (the layout oneDNN's bf16 convolutions take without reordering).

The fp32 program (model.pt2) cannot simply be run under autocast: its graph asserts the fp32
dtypes it was traced with, so the bf16 model is a program of its own, traced under autocast and
run only under it. On a CPU with AMX it is the fastest deployment at batch 32; on AVX-512 BF16
without AMX the int8 model stays ahead of it (docs/BENCHMARKS.md).

As with int8, the bf16 model is a different model: ``write_export`` compares it with fp32 on the
folds' test cells (refused below ``--min-agreement`` unless ``--force-precision``) and re-fits
its referral threshold and prediction sets on its own probabilities of the calibration cells,
with the helpers of ``reduced_precision.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.transforms import Pipeline
from ..store.fusion_folder import FusionSettings
from .reduced_precision import calibration_cells, judged_on_test_cells, letterboxed_batch, recertify

BF16_FILE = "model_bf16.pt2"
RUNTIME = (
    "torch.export program traced under PyTorch's CPU autocast to bfloat16 and run under it, the input in "
    "channels-last memory format; its rules re-fitted on the calibration cells"
)


def load_program(path: Path) -> torch.nn.Module:
    """An export folder's program (model.pt2 or model_bf16.pt2), ready to call."""
    return torch.export.load(str(path)).module()


def run_program(program: torch.nn.Module, cells: torch.Tensor, bf16: bool) -> torch.Tensor:
    """A loaded program's output for a uint8 batch; with ``bf16`` under autocast, the batch in
    channels-last memory format (how model_bf16.pt2 runs)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if bf16:
            cells = cells.contiguous(memory_format=torch.channels_last)
        return program(cells).float()


def program_probabilities(program: torch.nn.Module, images: np.ndarray, bf16: bool, batch_size: int = 32) -> np.ndarray:
    """Class probabilities of a loaded program (model.pt2, or with ``bf16`` model_bf16.pt2) for
    letterboxed uint8 cells, batch by batch."""
    batches = [
        run_program(program, torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])), bf16).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches).astype(np.float64)


def bf16_model(
    folder: Path,
    runs: Path,
    settings: FusionSettings,
    folds: Sequence[int],
    pipeline: Pipeline,
    decision: dict,
    min_agreement: float = 0.99,
    force: bool = False,
) -> dict:
    """model.json's ``bf16`` block for ``folder/model_bf16.pt2`` (already written): how it runs,
    its comparison with the fp32 program on the folds' test cells, and ``decision`` re-certified
    on its own probabilities of the calibration cells (module docstring)."""
    fp32, reduced = load_program(folder / "model.pt2"), load_program(folder / BF16_FILE)

    def both(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return program_probabilities(fp32, images, bf16=False), program_probabilities(reduced, images, bf16=True)

    comparison = judged_on_test_cells("bf16", both, runs, settings, folds, pipeline, min_agreement, force)
    split, calibration_paths, calibration_labels = calibration_cells(runs, settings, folds)
    block = {
        "file": BF16_FILE,
        "runtime": RUNTIME,
        "calibration": {"split": split, "cells": len(calibration_paths), "folds": list(folds)},
        "test": comparison.to_dict(),
    }
    if decision:
        cells = letterboxed_batch(pipeline, calibration_paths)
        probabilities = program_probabilities(reduced, cells, bf16=True)
        block["decision"] = recertify(decision, probabilities, calibration_labels)
    return block
