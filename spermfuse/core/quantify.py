"""Per-sample class fractions (% normal forms, defect groups) that account for the classifier's errors.

A lab reports a sample, not cells: WHO asks for at least 200 spermatozoa and the percentage of
normal forms. Counting a classifier's predictions is biased whenever it errs; the methods here
correct the count with the classifier's confusion measured on cells it never trained on:

- ``cc``  classify and count: the share of each predicted class (the naive baseline);
- ``acc`` adjusted classify and count: the fractions ``p`` on the simplex that best explain the
  predicted shares, ``q = Mᵀ p`` (M the row-normalised confusion, rows = true class), by least
  squares under ``p >= 0, Σp = 1`` (Forman 2008; Gart & Buck 1966 for two classes);
- ``pcc`` probabilistic classify and count: the mean of calibrated probabilities;
- ``em``  the prior adjustment of Saerens, Latinne & Decaestecker (2002): the probabilities are
  re-weighted from the calibration cells' prior to the sample's until it is a fixed point. It
  needs probabilities calibrated class by class: callers recalibrate with a bias-corrected
  temperature (``calibration.fit_bias_corrected_temperature``, Alexandari et al. 2020) first:
  one temperature leaves per-class miscalibration, which drives EM's prior of a class to zero.

Intervals are percentile bootstraps that resample the sample's cells *and* the confusion counts
(each true class's row from its own cells), so the uncertainty of M widens the interval. A group
roll-up (head / neck / tail / normal) sums each bootstrap replicate's class fractions, so a group's
interval is its own, not a sum of the classes' intervals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import SpermfuseError

# scipy.optimize is imported in the one function that uses it (calibration.py says why).

log = logging.getLogger(__name__)

METHODS = ("cc", "acc", "pcc", "em")
NEEDS_PROBABILITIES = ("pcc", "em")
WHO_MINIMUM_CELLS = 200  # WHO laboratory manual, 6th edition: at least 200 spermatozoa per sample
WHO_NORMAL_LIMIT = 0.04  # its lower reference limit of normal forms (also Kruger's strict-criteria 4 %)
INDISTINGUISHABLE = 0.1  # two confusion rows closer than this (L1) are one class to the classifier
SINGULAR = 1e-6  # smallest singular value of M below which the system has no unique solution
SEPARATE_ADVICE = "estimate on groups that join them (--estimate-on groups), or label more held-out cells"
_SUM_WEIGHT = 1e3  # weight of the Σp = 1 row in the least-squares solve (its error ~ 1e-6 of the residual)


class QuantifyError(SpermfuseError):
    """A confusion or sample that cannot give fractions (names the class and the fix)."""


@dataclass
class FractionEstimate:
    """Estimated fractions of a sample, with a ``level`` interval per class (or per group)."""

    classes: list[str]
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    method: str
    n_cells: int
    level: float
    groups: "FractionEstimate | None" = None  # the same for the group roll-up, when a map was given

    def of(self, name: str) -> tuple[float, float, float]:
        """(estimate, low, high) of the class or group ``name``."""
        for part in (self, self.groups):
            if part is not None and name in part.classes:
                i = part.classes.index(name)
                return float(part.estimate[i]), float(part.low[i]), float(part.high[i])
        raise QuantifyError(f"{name!r} is neither a class nor a group of this estimate")


def row_normalised(confusion: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """M[i, j] = P(predicted j | true i); a true class without cells is refused (naming it)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] != len(classes):
        raise QuantifyError(f"the confusion is {confusion.shape}, not {len(classes)} x {len(classes)} (rows = true)")
    if (confusion < 0).any() or not np.isfinite(confusion).all():
        raise QuantifyError("the confusion has negative or non-finite counts")
    rows = confusion.sum(axis=1)
    empty = [classes[i] for i in np.flatnonzero(rows == 0)]
    if empty:
        raise QuantifyError(
            f"the confusion has no held-out cells of true class {', '.join(empty)}: its errors are unknown; "
            "label held-out cells of it, or estimate on groups (--estimate-on groups)"
        )
    return confusion / rows[:, None]


def check_distinguishable(matrix: np.ndarray, classes: Sequence[str], advice: str = SEPARATE_ADVICE) -> None:
    """Refuse a confusion under which two classes' fractions cannot be separated: two true classes
    predicted (almost) alike, or a numerically singular M. Near-singular but distinguishable
    confusions are kept: the constrained solve stays bounded and the interval widens honestly.
    ``advice``: what the refusal tells the user to do."""
    distance = np.abs(matrix[:, None, :] - matrix[None, :, :]).sum(axis=2)
    distance[np.diag_indices_from(distance)] = np.inf
    i, j = np.unravel_index(np.argmin(distance), distance.shape)
    smallest = np.linalg.svd(matrix, compute_uv=False).min()
    if distance[i, j] >= INDISTINGUISHABLE and smallest >= SINGULAR:
        return
    raise QuantifyError(
        f"the classifier cannot tell {classes[i]} from {classes[j]} apart (their confusion rows differ by "
        f"{distance[i, j]:.3f} in total; smallest singular value {smallest:.2g}): their fractions are not identifiable; "
        f"{advice}"
    )


def check_confusion(confusion: np.ndarray, classes: Sequence[str], method: str, advice: str = SEPARATE_ADVICE) -> None:
    """Every check of the confusion that ``method`` needs, before any work: ``cc`` does not use
    it; ``em`` needs each class's held-out cells (their prior), and so does ``pcc``: its
    probabilities are recalibrated per class on those cells, and a class without any gets a bias
    that drives its probabilities towards 0 (review science-v0.3, m6); ``acc`` also needs the
    classes told apart."""
    if method in ("acc", "pcc", "em"):
        matrix = row_normalised(confusion, classes)
        if method == "acc":
            check_distinguishable(matrix, classes, advice)


def merge_classes(confusion: np.ndarray, groups: Sequence[int], num_groups: int) -> np.ndarray:
    """The confusion of a classifier whose classes are merged into groups (``groups[c]``: the group
    of class c): rows and columns of a group summed."""
    indicator = np.eye(num_groups)[np.asarray(groups)]
    return indicator.T @ np.asarray(confusion, dtype=np.float64) @ indicator


def adjusted_count(predicted_shares: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """ACC: the fractions ``p`` with ``p >= 0, Σp = 1`` minimising ``|Mᵀp - q|²`` (exact when
    ``q = Mᵀp`` for an invertible M)."""
    from scipy.optimize import nnls

    classes = matrix.shape[0]
    system = np.vstack([matrix.T, np.full((1, classes), _SUM_WEIGHT)])
    target = np.concatenate([predicted_shares, [_SUM_WEIGHT]])
    solution, _ = nnls(system, target, maxiter=50 * classes)
    return solution / solution.sum()


def em_prior(
    probabilities: np.ndarray,
    calibration_prior: np.ndarray,
    weights: np.ndarray | None = None,
    tolerance: float = 1e-6,
    max_iterations: int = 300,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Saerens–Latinne–Decaestecker EM: the sample prior ``π`` for which the probabilities,
    re-weighted by ``π / calibration_prior`` and renormalised, average to ``π``.

    ``weights`` [B, N] run B weighted copies at once (the bootstrap, each with its own
    ``calibration_prior`` row when that is [B, C]); the result is then [B, C]. ``start``: the
    first prior (default: the mean probability, i.e. pcc)."""
    single = weights is None
    weights = np.full((1, len(probabilities)), 1.0 / len(probabilities)) if single else weights
    weights = weights / weights.sum(axis=1, keepdims=True)
    prior = weights @ probabilities if start is None else np.broadcast_to(start, (len(weights), len(start))).copy()
    ratio_base = 1.0 / np.maximum(calibration_prior, 1e-12)
    for _ in range(max_iterations):
        adjusted = probabilities[None, :, :] * (prior * ratio_base)[:, None, :]
        adjusted /= adjusted.sum(axis=2, keepdims=True)
        updated = np.einsum("bn,bnc->bc", weights, adjusted)
        if np.abs(updated - prior).max() < tolerance:
            prior = updated
            break
        prior = updated
    return prior[0] if single else prior


def _percentiles(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2.0
    return np.quantile(replicates, tail, axis=0), np.quantile(replicates, 1.0 - tail, axis=0)


def _resampled_confusions(confusion: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, C, C]: each true class's row redrawn from its own cell count and shares."""
    rows = confusion.sum(axis=1).astype(np.int64)
    shares = confusion / rows[:, None]
    return np.stack([rng.multinomial(rows, shares) for _ in range(draws)]).astype(np.float64)


def _class_replicates(
    method: str,
    data: np.ndarray,
    confusion: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(point estimate [C], bootstrap replicates [n_boot, C]) of one method."""
    num_classes = confusion.shape[0]
    cells = len(data)
    if method in ("cc", "acc"):
        shares = np.bincount(data, minlength=num_classes) / cells
        resampled_shares = rng.multinomial(cells, shares, size=n_boot) / cells
        if method == "cc":
            return shares, resampled_shares
        matrix = confusion / confusion.sum(axis=1, keepdims=True)
        point = adjusted_count(shares, matrix)
        replicates = np.empty((n_boot, num_classes))
        for b, resampled in enumerate(_resampled_confusions(confusion, n_boot, rng)):
            replicates[b] = adjusted_count(resampled_shares[b], resampled / resampled.sum(axis=1, keepdims=True))
        return point, replicates
    weights = rng.multinomial(cells, np.full(cells, 1.0 / cells), size=n_boot).astype(np.float64)
    if method == "pcc":
        return data.mean(axis=0), weights @ data / cells
    rows = confusion.sum(axis=1)
    prior = rows / rows.sum()
    resampled_priors = rng.multinomial(int(rows.sum()), prior, size=n_boot) / rows.sum()
    point = em_prior(data, prior)
    # Replicates start near where they end (a zero prior would stay zero: keep every class alive).
    return point, em_prior(data, resampled_priors, weights, start=0.9 * point + 0.1 / num_classes)


def _check_sample(predicted: np.ndarray, method: str, num_classes: int) -> np.ndarray:
    if method not in METHODS:
        raise QuantifyError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    predicted = np.asarray(predicted)
    if len(predicted) == 0:
        raise QuantifyError("the sample has no cells")
    if method in NEEDS_PROBABILITIES:
        if predicted.ndim != 2 or predicted.shape[1] != num_classes:
            raise QuantifyError(f"method {method}: needs probabilities [cells, {num_classes}], got {predicted.shape}")
        if not np.isfinite(predicted).all() or (predicted < 0).any():
            raise QuantifyError(f"method {method}: probabilities must be finite and non-negative")
        return predicted / predicted.sum(axis=1, keepdims=True)
    if predicted.ndim == 2:  # probabilities given to a counting method: count their argmax
        predicted = predicted.argmax(axis=1)
    if predicted.ndim != 1 or predicted.min() < 0 or predicted.max() >= num_classes:
        raise QuantifyError(f"method {method}: needs predicted class indices in 0..{num_classes - 1}")
    return predicted.astype(np.int64)


def _group_map(groups: Mapping[str, str], classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Group names (first-seen order) and the [C, G] indicator of each class's group."""
    missing = [c for c in classes if c not in groups]
    if missing:
        raise QuantifyError(f"the group map has no group for class {', '.join(missing[:3])}; give every class one")
    names = list(dict.fromkeys(groups[c] for c in classes))
    indicator = np.zeros((len(classes), len(names)))
    for i, c in enumerate(classes):
        indicator[i, names.index(groups[c])] = 1.0
    return names, indicator


def class_fractions(
    predicted: np.ndarray,
    confusion: np.ndarray,
    classes: Sequence[str] | None = None,
    level: float = 0.95,
    method: str = "acc",
    n_boot: int = 2000,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
) -> FractionEstimate:
    """The sample's class fractions with ``level`` bootstrap intervals.

    ``predicted``: the sample's predicted class indices [N] (``cc``/``acc``) or calibrated
    probabilities [N, C] (``pcc``/``em``); ``confusion``: [C, C] counts, rows = true class,
    columns = predicted, from cells the model never trained on (for ``em`` its row sums give the
    prior the probabilities were calibrated under). ``groups`` maps each class to a group
    (e.g. head / neck / tail / normal) for the roll-up in ``.groups``."""
    confusion = np.asarray(confusion, dtype=np.float64)
    classes = list(classes) if classes is not None else [str(i) for i in range(len(confusion))]
    check_confusion(confusion, classes, method)
    if not 0.0 < level < 1.0:
        raise QuantifyError(f"level {level}: give a probability between 0 and 1, e.g. 0.95")
    if n_boot < 1:
        raise QuantifyError(f"n_boot {n_boot}: give at least 1 bootstrap replicate")
    data = _check_sample(predicted, method, len(classes))
    rng = np.random.default_rng(seed)
    point, replicates = _class_replicates(method, data, confusion, n_boot, rng)
    low, high = _percentiles(replicates, level)
    result = FractionEstimate(classes, point, low, high, method, len(data), level)
    if groups is not None:
        names, indicator = _group_map(groups, classes)
        group_low, group_high = _percentiles(replicates @ indicator, level)
        result.groups = FractionEstimate(names, point @ indicator, group_low, group_high, method, len(data), level)
    return result


def flag(low: float, high: float, limit: float = WHO_NORMAL_LIMIT) -> str:
    """``below`` when the whole interval lies below ``limit``, ``above`` when it lies above,
    ``undetermined`` when the interval contains it."""
    if high < limit:
        return "below"
    if low > limit:
        return "above"
    return "undetermined"
