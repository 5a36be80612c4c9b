"""A reduced-precision model (int8: ``quantize.py``; bf16: ``bf16.py``) treated as the different
model it is: judged against fp32 on the folds' test cells, each once (top-1 agreement, both
accuracies, the change's paired interval and McNemar p; refused below ``--min-agreement`` unless
``--force-precision``), and its referral threshold and prediction sets re-fitted with the same
settings on its own probabilities of the calibration cells (the run's ``cal`` cells, else its
validation cells; never test cells).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core import metrics
from ..core.conformal import SetCalibrator, calibrate_sets
from ..core.errors import FusionError, SpermfuseError
from ..core.logits import LogitsSet
from ..core.selective import Certificate, certify_threshold
from ..core.transforms import Pipeline
from ..data.images import load_rgb
from ..store.fusion_folder import FusionSettings, fused_folds
from ..store.run_folder import data_root_of_run, fold_folder

log = logging.getLogger(__name__)


class PrecisionError(SpermfuseError):
    """A reduced-precision model that does not agree enough with its fp32 model."""


def letterboxed_batch(pipeline: Pipeline, paths: Sequence[Path]) -> np.ndarray:
    """The exported graph's input for image files: letterboxed uint8 RGB, N x 3 x S x S."""
    rng = np.random.default_rng(0)  # the evaluation geometry draws nothing; the argument is required
    return np.stack([np.asarray(pipeline.geometry(load_rgb(p), rng)).transpose(2, 0, 1) for p in paths])


def recertify(decision: dict, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """``decision`` (model.json's certified rules) fitted again on ``probabilities`` of the same
    calibration cells, with each rule's own settings (target, delta, method; alpha, groups)."""
    rules = {}
    if "referral" in decision:
        old = Certificate.from_dict(decision["referral"])
        if old.n_calibration != len(labels):
            raise PrecisionError(
                f"the referral was certified on {old.n_calibration} cells, not the {len(labels)} found; fuse again"
            )
        correct = probabilities.argmax(axis=1) == labels
        rules["referral"] = certify_threshold(
            probabilities.max(axis=1), correct, old.target_accuracy, old.delta, old.method
        ).to_dict()
    if "prediction_sets" in decision:
        old = SetCalibrator.from_dict(decision["prediction_sets"])
        groups = old.group_of_class or None
        rules["prediction_sets"] = calibrate_sets(
            probabilities, labels, old.alpha, old.method, groups, old.lam, old.k_reg
        ).to_dict()
    return rules


@dataclass
class Comparison:
    """The reduced-precision model beside fp32 on the same cells."""

    cells: int
    agreement: float
    accuracy_fp32: float
    accuracy_reduced: float
    difference_interval: tuple[float, float]
    mcnemar_p: float
    held_out: bool

    def to_dict(self) -> dict:
        return {
            "cells": self.cells,
            "top1_agreement_with_fp32": self.agreement,
            "accuracy_fp32": self.accuracy_fp32,
            "accuracy": self.accuracy_reduced,
            "accuracy_change_95": list(self.difference_interval),
            "mcnemar_p": self.mcnemar_p,
            "held_out": self.held_out,
        }


def paired_difference_interval(correct_a: np.ndarray, correct_b: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """A 95 % interval of accuracy(b) - accuracy(a) on the same cells (Wald, paired: only the
    cells where the two disagree add variance)."""
    n = len(correct_a)
    gained, lost = int(np.sum(correct_b & ~correct_a)), int(np.sum(correct_a & ~correct_b))
    difference = (gained - lost) / n
    spread = z * math.sqrt(max((gained + lost) / n - difference**2, 0.0) / n)
    return difference - spread, difference + spread


def compare_on_test_cells(fp32: np.ndarray, reduced: np.ndarray, labels: np.ndarray, held_out: bool) -> Comparison:
    """Top-1 agreement, both accuracies and the change's interval and McNemar p on test cells."""
    predicted_fp32, predicted_reduced = fp32.argmax(axis=1), reduced.argmax(axis=1)
    return Comparison(
        len(labels),
        float(np.mean(predicted_fp32 == predicted_reduced)),
        float(np.mean(predicted_fp32 == labels)),
        float(np.mean(predicted_reduced == labels)),
        paired_difference_interval(predicted_fp32 == labels, predicted_reduced == labels),
        metrics.mcnemar_p(labels, predicted_fp32, predicted_reduced),
        held_out,
    )


def judged_on_test_cells(
    precision: str,
    probabilities_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    runs: Path,
    settings: FusionSettings,
    folds: Sequence[int],
    pipeline: Pipeline,
    min_agreement: float,
    force: bool,
) -> Comparison:
    """The reduced model (``precision``) beside fp32 on the folds' test cells, each once:
    ``probabilities_of(letterboxed cells)`` gives both models' probabilities. Logged, and refused
    below ``min_agreement`` (:func:`check_agreement`)."""
    test_sets = fused_folds(runs, settings.models, folds, settings.prediction_weights(folds))
    paths, labels = unique_cells(test_sets, cells_root(runs, settings, folds))
    # One fold's test cells are held out from its pair; the folds' average has trained on each.
    comparison = compare_on_test_cells(*probabilities_of(letterboxed_batch(pipeline, paths)), labels, len(folds) == 1)
    log.info(
        "%s: top-1 agreement with fp32 %.4f on %d test cells; accuracy %.4f (fp32 %.4f)",
        precision,
        comparison.agreement,
        comparison.cells,
        comparison.accuracy_reduced,
        comparison.accuracy_fp32,
    )
    check_agreement(comparison, min_agreement, force, precision)
    return comparison


def check_agreement(comparison: Comparison, min_agreement: float, force: bool = False, precision: str = "int8") -> None:
    """Refuse a reduced model (``precision``) that agrees with fp32 on fewer test cells than
    ``min_agreement`` (unless ``force``: then a warning)."""
    if comparison.agreement >= min_agreement:
        return
    message = (
        f"--precision {precision}: top-1 agreement with fp32 is {comparison.agreement:.4f} on {comparison.cells} test cells, "
        f"below --min-agreement {min_agreement}"
    )
    if not force:
        raise PrecisionError(f"{message}; nothing was written (keep fp32, or --force-precision to write it anyway)")
    log.warning("%s; written anyway (--force-precision)", message)


def unique_cells(sets: Sequence[LogitsSet], root: Path) -> tuple[list[Path], np.ndarray]:
    """The image files and labels of ``sets`` (one per fold), each cell once (a calibration
    holdout that every fold shares is one set of cells)."""
    seen: dict[str, int] = {}
    for logits in sets:
        for path, label in zip(logits.paths.tolist(), logits.labels.tolist()):
            seen.setdefault(str(path), int(label))
    return [root / p for p in seen], np.array(list(seen.values()), dtype=np.int64)


def calibration_cells(runs: Path, settings: FusionSettings, folds: Sequence[int]) -> tuple[str, list[Path], np.ndarray]:
    """The split, image files and labels of the cells the promises were fitted on, each once:
    ``cal`` where train.py held some out, else ``val`` (as fuse.py chose them)."""
    weights = settings.prediction_weights(folds)
    try:
        split, sets = "cal", fused_folds(runs, settings.models, folds, weights, "cal")
    except FusionError:
        split, sets = "val", fused_folds(runs, settings.models, folds, weights, "val")
    return split, *unique_cells(sets, cells_root(runs, settings, folds))


def cells_root(runs: Path, settings: FusionSettings, folds: Sequence[int]) -> Path:
    """The data folder the runs' cell paths are relative to."""
    return data_root_of_run(fold_folder(runs / settings.models[0], folds[0]))
