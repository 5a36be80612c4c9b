"""Simulated patients that check ``quantify``'s per-sample intervals against known fractions.

Each simulated sample has its own true class fractions (a % normal forms drawn uniformly in
0–15 %, the defects from a flat Dirichlet). Its cells are drawn, class by class, from held-out
cells of a real classifier (their fused logits and true labels, e.g. the demo's out-of-fold test
cells), so the sample is classified exactly as that classifier classifies such cells. The
confusion (and, for ``pcc``/``em``, the bias-corrected temperature) is estimated from the *other* half of the
held-out cells, re-split for every sample, optionally from only a few of them: the interval must
carry that uncertainty too. The truth an interval must cover is the patient's fraction, not the
200 cells' count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..core.calibration import fit_bias_corrected_temperature
from ..core.metrics import confusion_counts
from ..core.quantify import WHO_NORMAL_LIMIT, QuantifyError, class_fractions, flag
from ..page import markdown_table

log = logging.getLogger(__name__)

NORMAL_RANGE = (0.0, 0.15)  # the simulated patients' % normal forms (WHO's limit 4 % inside)


@dataclass
class SimulationSetting:
    """One row of the coverage table."""

    method: str
    confusion_cells: int | None  # None: the whole calibration half
    samples: int = 200
    cells: int = 200
    level: float = 0.95
    n_boot: int = 500


def _halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class random half (calibration) and the rest (the patients' cells)."""
    calibration, pool = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        half = len(members) // 2
        calibration.append(members[:half])
        pool.append(members[half:])
    return np.concatenate(calibration), np.concatenate(pool)


def _subsample(indices: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``indices``, stratified by class (each class keeps at least one cell)."""
    chosen = []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c]
        keep = max(1, round(size * len(members) / len(indices)))
        chosen.append(rng.choice(members, size=min(keep, len(members)), replace=False))
    return np.concatenate(chosen)


def _true_fractions(num_classes: int, normal: int, rng: np.random.Generator) -> np.ndarray:
    fractions = rng.dirichlet(np.ones(num_classes - 1)) * (1.0 - (share := rng.uniform(*NORMAL_RANGE)))
    return np.insert(fractions, normal, share)


def simulate(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    groups: Mapping[str, str],
    setting: SimulationSetting,
    normal: str = "Normal",
    seed: int = 0,
) -> dict:
    """Bias, RMSE, interval coverage and width of % ``normal``, each group's coverage, and how
    often a sample is flagged on the wrong side of WHO's 4 % (see the module docstring)."""
    rng = np.random.default_rng(seed)
    normal_index = list(classes).index(normal)
    errors, covered, widths, wrong_flags, refused = [], [], [], 0, 0
    group_covered: dict[str, list[bool]] = {}
    for sample in range(setting.samples):
        calibration, pool = _halves(labels, rng)
        if setting.confusion_cells is not None:
            calibration = _subsample(calibration, labels, setting.confusion_cells, rng)
        truth = _true_fractions(len(classes), normal_index, rng)
        counts = rng.multinomial(setting.cells, truth)
        cells = np.concatenate(
            [rng.choice(pool[labels[pool] == c], size=n, replace=True) for c, n in enumerate(counts) if n]
        )
        confusion = confusion_counts(labels[calibration], logits[calibration].argmax(axis=1), len(classes))
        if setting.method in ("pcc", "em"):
            data = fit_bias_corrected_temperature(logits[calibration], labels[calibration]).probabilities(logits[cells])
        else:
            data = logits[cells].argmax(axis=1)
        try:
            estimate = class_fractions(
                data, confusion, classes, setting.level, setting.method, setting.n_boot, seed + sample, groups
            )
        except QuantifyError:
            refused += 1
            continue
        value, low, high = estimate.of(normal)
        errors.append(value - truth[normal_index])
        covered.append(low <= truth[normal_index] <= high)
        widths.append(high - low)
        true_flag = "below" if truth[normal_index] < WHO_NORMAL_LIMIT else "above"
        wrong_flags += flag(low, high) not in (true_flag, "undetermined")
        for name in estimate.groups.classes:
            truth_of_group = sum(t for c, t in zip(classes, truth) if groups[c] == name)
            _, group_low, group_high = estimate.of(name)
            group_covered.setdefault(name, []).append(group_low <= truth_of_group <= group_high)
    kept = len(errors)
    return {
        "method": setting.method,
        "confusion_cells": setting.confusion_cells,
        "samples": setting.samples,
        "refused": refused,
        "bias": float(np.mean(errors)) if kept else float("nan"),
        "rmse": float(np.sqrt(np.mean(np.square(errors)))) if kept else float("nan"),
        "coverage": float(np.mean(covered)) if kept else float("nan"),
        "width": float(np.mean(widths)) if kept else float("nan"),
        "wrong_side": wrong_flags / kept if kept else float("nan"),
        "group_coverage": {name: float(np.mean(hits)) for name, hits in group_covered.items()},
    }


def coverage_table(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    groups: Mapping[str, str],
    settings: Sequence[SimulationSetting],
    normal: str = "Normal",
    seed: int = 0,
) -> tuple[str, list[dict]]:
    """The Markdown coverage table of ``settings`` (one row each) and the rows as dicts."""

    results = []
    for setting in settings:
        results.append(simulate(logits, labels, classes, groups, setting, normal, seed))
        log.info("simulated %s with %s confusion cells", setting.method, setting.confusion_cells or "all")
    group_names = list(results[0]["group_coverage"])
    header = ["method", "confusion from", "% normal: bias", "RMSE", "coverage", "mean width"]
    header += [f"{g} coverage" for g in group_names if g != "normal"] + ["wrong side of 4 %", "refused"]
    rows = []
    for setting, result in zip(settings, results):
        rows.append(
            [
                setting.method,
                "half the held-out cells" if setting.confusion_cells is None else f"{setting.confusion_cells} cells",
                f"{100 * result['bias']:+.1f} pp",
                f"{100 * result['rmse']:.1f} pp",
                f"{result['coverage']:.3f}",
                f"{100 * result['width']:.1f} pp",
            ]
            + [f"{result['group_coverage'][g]:.3f}" for g in group_names if g != "normal"]
            + [f"{result['wrong_side']:.3f}", f"{result['refused']}/{result['samples']}"]
        )
    return markdown_table(header, rows), results
