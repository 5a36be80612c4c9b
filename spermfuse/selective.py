"""Certified referral: a confidence threshold whose accepted cells keep a promised accuracy.

The promise (Geifman & El-Yaniv 2017, "Selective classification for deep neural networks"):
with probability at least 1 - delta over the draw of the calibration cells, the accuracy on new
cells exchangeable with them whose confidence is at least the threshold is at least the target.
The laxest threshold whose *observed* accuracy reaches the target is no such promise: it is a
maximum over noisy candidates and misses the target about half the time
(``tests/test_selective.py`` keeps it as the counter-example).

Each candidate threshold is tested with a one-sided Clopper-Pearson upper bound on the error
rate of the cells it accepts, and the multiplicity of the tests is paid for:

- ``sgr`` (default): a binary search over the sorted confidences, each of its ceil(log2 m)
  tests at level delta / ceil(log2 m) (the SGR algorithm);
- ``grid``: a grid of thresholds fixed before the data (0.00, 0.01, ..., 1.00), Bonferroni
  over its 101 points.

When no threshold can be certified, the certificate says so: threshold +inf, every cell referred.
The promise is marginal over classes (a rare class may fare worse) and holds for cells from the
same distribution as the calibration cells; it says nothing about a new microscope or stain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from .errors import ConfigError

METHODS = ("sgr", "grid")
GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


@dataclass(frozen=True)
class Certificate:
    """A certified threshold and what backs it; ``threshold`` is +inf when nothing could be certified."""

    threshold: float
    target_accuracy: float
    delta: float
    method: str
    n_calibration: int
    n_accepted: int
    errors: int
    risk_upper_bound: float  # the Clopper-Pearson bound on the accepted error rate, at its corrected level

    @property
    def refers_all(self) -> bool:
        return math.isinf(self.threshold)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["threshold"] = None if self.refers_all else self.threshold  # JSON has no infinity
        return values

    @classmethod
    def from_dict(cls, data: dict) -> "Certificate":
        return cls(**{**data, "threshold": math.inf if data["threshold"] is None else data["threshold"]})


def clopper_pearson_upper(errors: int, n: int, level: float) -> float:
    """One-sided upper confidence bound, at ``level`` (e.g. 0.95), on a rate seen as ``errors`` of
    ``n``: the ``level`` quantile of Beta(errors + 1, n - errors); 1 when ``n`` is 0 or all are errors."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level {level}: give a value in (0, 1)")
    if n <= 0 or errors >= n:
        return 1.0
    return float(stats.beta.ppf(level, errors + 1, n - errors))


def _test(confidence: np.ndarray, correct: np.ndarray, threshold: float, level: float) -> tuple[int, int, float]:
    accepted = confidence >= threshold
    n, errors = int(accepted.sum()), int((~correct[accepted]).sum())
    return n, errors, clopper_pearson_upper(errors, n, level)


def certify_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_accuracy: float, delta: float = 0.1, method: str = "sgr"
) -> Certificate:
    """The laxest threshold this method can certify (module docstring) on calibration cells'
    ``confidence`` (their top probability) and ``correct`` (whether the top class is right)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if not 0.0 < target_accuracy < 1.0:
        raise ConfigError(f"--refer-accuracy {target_accuracy}: give a value in (0, 1), e.g. 0.95")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"--refer-delta {delta}: give a probability in (0, 1), e.g. 0.1")
    if method not in METHODS:
        raise ConfigError(f"--refer-method {method}: choose one of {', '.join(METHODS)}")
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ConfigError("confidence and correct must be two vectors of one length")
    risk = 1.0 - target_accuracy
    best = (math.inf, 0, 0, 1.0)
    if method == "grid":
        level = 1.0 - delta / len(GRID)
        for threshold in GRID[::-1]:  # strictest first; keep the laxest that passes
            n, errors, bound = _test(confidence, correct, float(threshold), level)
            if n and bound <= risk:
                best = (float(threshold), n, errors, bound)
    elif len(confidence):
        candidates = np.unique(confidence)  # ascending: a lower index accepts more cells
        tests = max(1, math.ceil(math.log2(len(candidates) + 1)))
        level = 1.0 - delta / tests
        low, high = 0, len(candidates) - 1
        for _ in range(tests):
            if low > high:
                break
            middle = (low + high) // 2
            n, errors, bound = _test(confidence, correct, float(candidates[middle]), level)
            if bound <= risk:
                best = (float(candidates[middle]), n, errors, bound)
                high = middle - 1  # certified: try to accept more
            else:
                low = middle + 1
    threshold, n, errors, bound = best
    return Certificate(threshold, target_accuracy, delta, method, len(confidence), n, errors, bound)


def accepted_accuracy(confidence: np.ndarray, correct: np.ndarray, threshold: float, level: float = 0.95) -> dict:
    """How a threshold did on other cells: accepted count, share referred, accuracy of the accepted
    with its two-sided Clopper-Pearson interval at ``level``."""
    confidence, correct = np.asarray(confidence), np.asarray(correct, dtype=bool)
    accepted = confidence >= threshold
    n, right = int(accepted.sum()), int(correct[accepted].sum())
    tail = (1.0 - level) / 2
    low = float(stats.beta.ppf(tail, right, n - right + 1)) if right > 0 else 0.0
    high = float(stats.beta.ppf(1 - tail, right + 1, n - right)) if right < n else 1.0
    return {
        "accepted": n,
        "referred_share": float(1.0 - accepted.mean()) if len(accepted) else math.nan,
        "accepted_accuracy": right / n if n else math.nan,
        "interval": [low, high] if n else [math.nan, math.nan],
    }
