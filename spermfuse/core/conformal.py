"""Conformal prediction sets: for a cell the model is unsure of, the classes it may be, with a
stated coverage ("one of {TaperedHead, PyriformHead}, 90 %").

Split conformal prediction (Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle
introduction"): a score s(x, y) says how unusual class y is for image x; on n calibration cells
with their true labels, q is the ceil((n + 1)(1 - alpha))-th smallest score; the set of a new
cell is every class whose score is at most q. If the calibration cells and the new cell are
exchangeable, the true class is in the set with probability at least 1 - alpha.

Scores: ``lac`` 1 - p_y (smallest sets on average); ``aps`` the probability mass of the classes
ranked above y plus p_y itself (Romano et al. 2020; adapts the set to the cell's difficulty);
``raps`` aps plus lam * max(0, rank(y) - k_reg) (Angelopoulos et al. 2021; shorter tails).

APS and RAPS are used without their randomisation (u = 1 in "above + u * p_y"), at calibration
and at prediction alike. A randomised score needs a fresh uniform per cell; drawn from one seeded
generator per call, it tied a cell's set to its position in the call, and a one-image call always
got the same draw, which under-covered for some seeds (review science-v0.3, M1). Without it a
cell's set depends on its probabilities alone, and the coverage is still at least 1 - alpha, only
less tight (no upper bound of 1 - alpha + 1 / (n + 1)): slightly larger sets for a promise that
holds one cell at a time. ``by``: Mondrian calibration per group of classes (each group gets its own q from the
calibration cells of its classes), so the coverage holds within every group, not only on
average: per class would need at least ceil(1/alpha) - 1 calibration cells of every class.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .errors import ConfigError

METHODS = ("aps", "raps", "lac")


@dataclass(frozen=True)
class SetCalibrator:
    """What prediction needs to build the sets: the method, alpha, and q per group (``""``: all classes)."""

    method: str
    alpha: float
    quantiles: dict[str, float]  # group -> q (inf: that group's classes are always in the set)
    group_of_class: list[str] = field(default_factory=list)  # per class index; empty: one group ""
    n_calibration: dict[str, int] = field(default_factory=dict)
    lam: float = 0.01
    k_reg: int = 2

    def to_dict(self) -> dict:
        values = asdict(self)
        values["quantiles"] = {g: (None if math.isinf(q) else q) for g, q in self.quantiles.items()}
        return values

    @classmethod
    def from_dict(cls, data: dict) -> "SetCalibrator":
        quantiles = {g: (math.inf if q is None else q) for g, q in data["quantiles"].items()}
        return cls(**{**data, "quantiles": quantiles})


def _ranked(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: the class order by probability (descending), each class's rank (0 = top) and
    the probability mass strictly above it in that order."""
    order = np.argsort(-probabilities, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(probabilities.shape[1])[None, :].repeat(len(probabilities), 0), axis=1)
    sorted_probabilities = np.take_along_axis(probabilities, order, axis=1)
    above_sorted = np.cumsum(sorted_probabilities, axis=1) - sorted_probabilities
    above = np.empty_like(probabilities)
    np.put_along_axis(above, order, above_sorted, axis=1)
    return order, ranks, above


def class_scores(probabilities: np.ndarray, method: str, lam: float = 0.01, k_reg: int = 2) -> np.ndarray:
    """The score of every class of every cell [N, C] (module docstring)."""
    if method == "lac":
        return 1.0 - probabilities
    _, ranks, above = _ranked(probabilities)
    scores = above + probabilities
    if method == "raps":
        scores = scores + lam * np.maximum(0, ranks + 1 - k_reg)
    return scores


def _check(probabilities: np.ndarray, alpha: float, method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"--sets-method {method}: choose one of {', '.join(METHODS)}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--sets-alpha {alpha}: give a miscoverage in (0, 1), e.g. 0.1")
    if probabilities.ndim != 2:
        raise ConfigError("probabilities must be [cells, classes]")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest score; +inf when that exceeds n (too few cells)."""
    n = len(scores)
    k = math.ceil((n + 1) * (1.0 - alpha))
    return math.inf if k > n else float(np.sort(scores)[k - 1])


def calibrate_sets(
    probabilities: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.1,
    method: str = "lac",
    by: Mapping[int, str] | Sequence[str] | None = None,
    lam: float = 0.01,
    k_reg: int = 2,
) -> SetCalibrator:
    """q per group from calibration cells' ``probabilities`` [N, C] and true ``labels`` [N].

    ``by``: the group of each class (a list by class index, or a mapping); None: one group."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    _check(probabilities, alpha, method)
    groups = [""] * probabilities.shape[1] if by is None else [str(by[c]) for c in range(probabilities.shape[1])]
    true_scores = class_scores(probabilities, method, lam, k_reg)[np.arange(len(labels)), labels]
    cell_groups = np.array([groups[y] for y in labels])
    quantiles, counts = {}, {}
    for group in dict.fromkeys(groups):
        mask = cell_groups == group
        quantiles[group], counts[group] = conformal_quantile(true_scores[mask], alpha), int(mask.sum())
    return SetCalibrator(method, alpha, quantiles, [] if by is None else groups, counts, lam, k_reg)


def predict_sets(probabilities: np.ndarray, calibrator: SetCalibrator) -> np.ndarray:
    """bool [N, C]: class c is in cell n's set when its score is at most its group's q.

    Each cell's set depends on its own probabilities only, not on the other cells of the call."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(probabilities, calibrator.alpha, calibrator.method)
    scores = class_scores(probabilities, calibrator.method, calibrator.lam, calibrator.k_reg)
    groups = calibrator.group_of_class or [""] * probabilities.shape[1]
    limits = np.array([calibrator.quantiles[g] for g in groups])
    return scores <= limits[None, :]


def set_metrics(sets: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Coverage (overall, per class), mean set size, the size histogram and the coverage by size."""
    sets, labels = np.asarray(sets, dtype=bool), np.asarray(labels)
    covered = sets[np.arange(len(labels)), labels]
    sizes = sets.sum(axis=1)
    return {
        "coverage": float(covered.mean()),
        "per_class_coverage": {
            name: float(covered[labels == c].mean()) if (labels == c).any() else None for c, name in enumerate(classes)
        },
        "mean_size": float(sizes.mean()),
        "size_histogram": {int(k): int((sizes == k).sum()) for k in np.unique(sizes)},
        "coverage_by_size": {int(k): float(covered[sizes == k].mean()) for k in np.unique(sizes)},
        "empty_share": float((sizes == 0).mean()),
    }
