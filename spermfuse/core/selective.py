"""Certified referral: a confidence threshold whose accepted cells keep a promised accuracy.

The promise (Geifman & El-Yaniv 2017, "Selective classification for deep neural networks"):
with probability at least 1 - delta over the draw of the calibration cells, the accuracy on new
cells exchangeable with them whose confidence is at least the threshold is at least the target.
The laxest threshold whose *observed* accuracy reaches the target is no such promise: it is a
maximum over noisy candidates and misses the target about half the time
(``tests/test_selective.py`` keeps it as the counter-example).

Each candidate threshold is tested with a one-sided Clopper-Pearson upper bound on the error
rate of the cells it accepts (equivalently, the p-value BinomCDF(errors; n, 1 - target) of the
null "the accepted accuracy is below the target"), and the multiplicity of the tests is paid for:

- ``ltt`` (default): Learn-Then-Test (Angelopoulos et al. 2021) as a fixed-sequence test over a
  grid of thresholds fixed before the data (0.00, 0.01, ..., 1.00), each test at the full level
  delta, stopping at the first that fails. The order is what each threshold's accepted cells'
  confidences predict (the bound their expected number of errors would give: the likeliest to
  pass first); it looks at no label, so the sequence is fixed before the test. A fixed sequence
  pays nothing for multiplicity, so it certifies far more often than the others at a lab's
  100-500 calibration cells (``benchmark.py --suite referral``);
- ``sgr``: a binary search over the sorted confidences, each of its ceil(log2 m) tests at
  level delta / ceil(log2 m) (the SGR algorithm of Geifman & El-Yaniv);
- ``grid``: the same grid as ``ltt``, Bonferroni over its 101 points (valid whatever the model).

When no threshold can be certified, the certificate says so: threshold +inf, every cell referred.
The promise is marginal over classes (a rare class may fare worse) and holds for cells from the
same distribution as the calibration cells; it says nothing about a new microscope or stain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from .errors import ConfigError

# scipy.stats is imported in the functions that use it: a script that certifies nothing (fuse.py
# --predict, --help) starts without loading it.

METHODS = ("ltt", "sgr", "grid")
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
        """Whether no threshold was certified, so that every cell is referred."""
        return math.isinf(self.threshold)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["threshold"] = None if self.refers_all else self.threshold  # JSON has no infinity
        return values

    @classmethod
    def from_dict(cls, data: dict) -> "Certificate":
        return cls(**{**data, "threshold": math.inf if data["threshold"] is None else data["threshold"]})


def clopper_pearson_upper(errors: ArrayLike, n: ArrayLike, level: float) -> float | np.ndarray:
    """One-sided upper confidence bound, at ``level`` (e.g. 0.95), on a rate seen as ``errors`` of
    ``n``: the ``level`` quantile of Beta(errors + 1, n - errors); 1 when ``n`` is 0 or all are errors.
    Scalars give a float, arrays an array of bounds."""
    from scipy import stats

    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level {level}: give a value in (0, 1)")
    errors, n = np.broadcast_arrays(np.asarray(errors), np.asarray(n))
    bound = np.ones(errors.shape)
    valid = (n > 0) & (errors < n)
    bound[valid] = stats.beta.ppf(level, errors[valid] + 1, n[valid] - errors[valid])
    return float(bound) if bound.ndim == 0 else bound


def _test(confidence: np.ndarray, correct: np.ndarray, threshold: float, level: float) -> tuple[int, int, float]:
    accepted = confidence >= threshold
    n, errors = int(accepted.sum()), int((~correct[accepted]).sum())
    return n, errors, clopper_pearson_upper(errors, n, level)


def _grid_tests(confidence: np.ndarray, correct: np.ndarray, level: float) -> tuple[np.ndarray, ...]:
    """For every GRID threshold at once: the accepted cells, their errors, the bound at ``level``
    and the errors the accepted cells' own confidences expect (the sum of 1 - confidence)."""
    order = np.argsort(confidence, kind="stable")
    first = np.searchsorted(confidence[order], GRID, side="left")  # the first accepted cell in ``order``

    def from_first(values: np.ndarray) -> np.ndarray:  # the sum of values[i:] over ``order``, for each first i
        return np.concatenate([np.cumsum(values[order][::-1])[::-1], [0]])[first]

    accepted, errors = len(confidence) - first, from_first((~correct).astype(np.int64))
    return accepted, errors, clopper_pearson_upper(errors, accepted, level), from_first(1.0 - confidence)


def _grid_choice(confidence: np.ndarray, correct: np.ndarray, risk: float, delta: float, method: str):
    """``ltt`` or ``grid``: the laxest GRID threshold certified, as (threshold, n, errors, bound) or None."""
    level = 1.0 - delta if method == "ltt" else 1.0 - delta / len(GRID)
    accepted, errors, bounds, expected = _grid_tests(confidence, correct, level)
    passed = (accepted > 0) & (bounds <= risk)
    if method == "ltt":
        passed = _fixed_sequence(passed, accepted, clopper_pearson_upper(expected, accepted, level))
    if not passed.any():
        return None
    i = int(np.flatnonzero(passed)[0])  # GRID ascends: the first passing is the laxest
    return float(GRID[i]), int(accepted[i]), int(errors[i]), float(bounds[i])


def _fixed_sequence(passed: np.ndarray, accepted: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Which GRID thresholds a fixed-sequence test certifies: the non-empty ones in the order of
    the bound their cells' own confidences predict (smallest first, the stricter first on a tie),
    each at the full level, up to the first that fails. The order uses no label, so it is fixed
    before the test, as a fixed sequence must be."""
    order = [i for i in np.lexsort((-GRID, predicted)) if accepted[i] > 0]
    certified = np.zeros_like(passed)
    for i in order:
        if not passed[i]:
            break
        certified[i] = True
    return certified


def _binary_search_choice(confidence: np.ndarray, correct: np.ndarray, risk: float, delta: float):
    """``sgr``: the binary search over the observed confidences, ceil(log2 m) tests at delta / that."""
    best = None
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
    return best


def certify_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_accuracy: float, delta: float = 0.1, method: str = "ltt"
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
    risk, best = 1.0 - target_accuracy, None
    if len(confidence):
        if method == "sgr":
            best = _binary_search_choice(confidence, correct, risk, delta)
        else:
            best = _grid_choice(confidence, correct, risk, delta, method)
    threshold, n, errors, bound = best or (math.inf, 0, 0, 1.0)
    return Certificate(threshold, target_accuracy, delta, method, len(confidence), n, errors, bound)


def accepted_accuracy(confidence: np.ndarray, correct: np.ndarray, threshold: float, level: float = 0.95) -> dict:
    """How a threshold did on other cells: accepted count, share referred, accuracy of the accepted
    with its two-sided Clopper-Pearson interval at ``level``."""
    from scipy import stats

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
