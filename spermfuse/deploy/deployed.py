"""``fuse.py --predict IMAGES --deployed DIR``: prediction from an export folder alone.

The folder ``fuse.py --export`` wrote is all it reads: its manifest is checked first, model.json
gives the classes, the letterbox (``pipeline``, the first member's preprocessing record; the
normalisation happens inside the graph) and the certified rules, and the graph runs on the CPU:
``model.onnx`` (fp32) or with ``--precision int8`` ``model_int8.onnx`` in ONNX Runtime, or with
``--precision bf16`` ``model_bf16.pt2`` in PyTorch (``bf16.py``), the reduced models with the rules
re-certified on their own probabilities (``reduced_precision.py``), never the fp32 model's. This is what a
lab's CPU-only PC runs, and what ``--samples`` at int8 or bf16 speed runs.

``--samples`` corrects each sample's counts by the model's confusion on cells it never trained
on: the export writes those cells' fused logits (``held_out.npz``: ``labels``, ``logits_fp32``
and with int8 or bf16 ``logits_int8`` / ``logits_bf16``, that model's log-probabilities on the same cells) and their
origin (model.json's ``held_out``), from the cells ``--predict --samples`` with the runs would
use (``sample_report.deployed_held_out``), so that the folder alone makes the same report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.conformal import SetCalibrator
from ..core.errors import ConfigError, FusionError
from ..core.files import atomic_savez, safe_np_load
from ..core.metrics import confusion_counts
from ..core.selective import Certificate
from ..core.transforms import Pipeline, PipelineSpec, from_spec
from ..store.output_folder import verify_folder
from . import sample_report
from .bf16 import BF16_FILE, load_program, program_probabilities
from .quantize import INT8_FILE, cpu_session, onnx_probabilities
from .reduced_precision import letterboxed_batch

MODEL_FILES = {"fp32": "model.onnx", "int8": INT8_FILE, "bf16": BF16_FILE}
RUNTIMES = {"fp32": "ONNX Runtime", "int8": "ONNX Runtime", "bf16": "PyTorch, bf16 autocast"}
HELD_OUT_FILE = "held_out.npz"


@dataclass(frozen=True)
class DeployedModel:
    """An export folder's model of one precision, as ``--predict`` applies it."""

    folder: Path
    precision: str
    classes: list[str]
    spec: PipelineSpec
    decision: dict  # the rules certified for this precision's probabilities (empty: none travelled)
    folds: list[int]
    models: list[str]
    held_out: dict | None  # model.json's ``held_out``: the cells of held_out.npz (None: the export has none)

    @property
    def file(self) -> Path:
        """The model file of the exported precision."""
        return self.folder / MODEL_FILES[self.precision]

    @property
    def threshold(self) -> float | None:
        """The certified referral threshold (+inf: refer every cell); None without referral."""
        if "referral" not in self.decision:
            return None
        return Certificate.from_dict(self.decision["referral"]).threshold

    @property
    def set_calibrator(self) -> SetCalibrator | None:
        """The certified conformal set calibrator; None without prediction sets."""
        if "prediction_sets" not in self.decision:
            return None
        return SetCalibrator.from_dict(self.decision["prediction_sets"])


def read_deployed(folder: Path, precision: str = "fp32") -> DeployedModel:
    """The export folder's ``precision`` model, its folder checked against its manifest first."""
    if not folder.is_dir():
        raise ConfigError(f"--deployed {folder}: no such folder; give a folder written by fuse.py --export DIR")
    verify_folder(folder)
    description = json.loads((folder / "model.json").read_text())
    if "pipeline" not in description:
        raise ConfigError(
            f"--deployed {folder}: its model.json records no letterbox (exported by an earlier spermfuse); export it again"
        )
    name = MODEL_FILES[precision]
    if name not in description["files"]:
        how = f"--precision {precision}" if precision != "fp32" else "the ONNX extra installed (pip install .[export])"
        raise FusionError(f"--deployed {folder}: holds no {name}; export it again with {how}")
    rules = description[precision] if precision != "fp32" else description
    decision = rules.get("decision", {})
    return DeployedModel(
        folder,
        precision,
        list(description["classes"]),
        PipelineSpec.from_dict(description["pipeline"], str(folder / "model.json")),
        decision,
        list(description["folds"]),
        list(description["models"]),
        description.get("held_out"),
    )


def file_probabilities(file: Path, pipeline: Pipeline, images: Sequence[Path], batch_size: int = 32) -> np.ndarray:
    """An exported model's class probabilities of image files (an ONNX model in ONNX Runtime, or
    model_bf16.pt2 in PyTorch), letterboxed by ``pipeline``, batch by batch (never every image in
    memory at once)."""
    if file.name == BF16_FILE:
        program = load_program(file)

        def classify(cells: np.ndarray) -> np.ndarray:
            return program_probabilities(program, cells, bf16=True, batch_size=batch_size)
    else:
        session = cpu_session(file)

        def classify(cells: np.ndarray) -> np.ndarray:
            return onnx_probabilities(session, cells, batch_size)

    return np.concatenate(
        [
            classify(letterboxed_batch(pipeline, images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
    )


def deployed_probabilities(model: DeployedModel, images: Sequence[Path]) -> np.ndarray:
    """The deployed model's class probabilities of image files, letterboxed as model.json says."""
    return file_probabilities(model.file, from_spec(model.spec), images)


def write_held_out(
    folder: Path,
    held_out: sample_report.HeldOutConfusion,
    tuned_on_test: bool,
    cells_root: Path,
    pipeline: Pipeline,
) -> dict:
    """Write ``folder/held_out.npz`` (module docstring) and return model.json's ``held_out``
    block; the int8 or bf16 model's log-probabilities too when the folder holds one."""
    arrays = {"labels": held_out.labels, "logits_fp32": held_out.logits.astype(np.float32)}
    for precision in ("int8", "bf16"):
        if (folder / MODEL_FILES[precision]).exists():
            paths = [cells_root / p for p in held_out.paths.tolist()]
            probabilities = file_probabilities(folder / MODEL_FILES[precision], pipeline, paths)
            # log p is a logit vector of the same softmax: what the recalibrating estimators take.
            logits = np.log(np.maximum(probabilities, np.finfo(np.float64).tiny)).astype(np.float32)
            arrays[f"logits_{precision}"] = logits
    atomic_savez(folder / HELD_OUT_FILE, **arrays)
    return {
        "file": HELD_OUT_FILE,
        "split": held_out.split,
        "cells": len(held_out.labels),
        "source": held_out.source,
        "tuned_on_test": tuned_on_test,
    }


def sample_request(
    model: DeployedModel, options: sample_report.SampleSettings, groups_file: Path | None = None
) -> tuple[sample_report.SampleSettings, sample_report.HeldOutConfusion]:
    """``--samples``' settings and the deployed model's own held-out confusion (its precision's
    logits in held_out.npz), checked before any image is classified."""
    block = model.held_out
    if block is None:
        raise FusionError(
            f"--samples --deployed {model.folder}: the export carries no held-out cells to correct the counts with "
            "(the average of folds trained without --cal-holdout has none); export --fold K, or train with --cal-holdout F"
        )
    arrays = safe_np_load(model.folder / block["file"])
    logits, labels = arrays[f"logits_{model.precision}"], arrays["labels"]
    confusion = confusion_counts(labels, logits.argmax(axis=1), len(model.classes))
    source = block["source"] + (f", through the {model.precision} model" if model.precision != "fp32" else "")
    held_out = sample_report.HeldOutConfusion(confusion, model.classes, source, logits, labels, block["split"])
    sample_report.warn_if_tuned_on_test(held_out, block["tuned_on_test"])
    return sample_report.sample_settings(held_out, options, groups_file)
