"""Probabilities a lab can act on: temperature scaling, calibration scores, selective prediction.

- Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks"): one
  T > 0 per model, fitted by minimising the NLL of softmax(z / T) on *validation* logits;
  it changes confidences, never the predicted class.
- Scores: negative log-likelihood, the multi-class Brier score, the expected calibration
  error over equal-width confidence bins, and the data of a reliability diagram.
- Selective prediction: the risk-coverage curve (error of the accepted cells when only the
  most confident are accepted) and its area (AURC). The certified referral threshold is in
  ``selective.py``, the conformal prediction sets in ``conformal.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import SpermfuseError

# scipy.optimize is imported in the two fits that use it: a script that fits nothing (fuse.py --predict,
# --help) starts without loading it.


class CalibrationError(SpermfuseError):
    """Logits or a target that calibration or referral cannot work with; the message says which."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax(z) = z - logsumexp(z), with logsumexp = max + log1p(the other classes' exp(z - max)).

    log1p keeps the top class's log-probability away from exactly 0 until the margin is ~745
    (where exp underflows); the plain log(sum) rounds it to 0 from a margin of ~37 on, which
    flattened the NLL of well-separated cells and let a temperature fit stop anywhere."""
    shifted = np.asarray(logits, dtype=np.float64)
    top = shifted.argmax(axis=1)
    shifted = shifted - shifted[np.arange(len(shifted)), top][:, None]
    others = np.exp(shifted)
    others[np.arange(len(shifted)), top] = 0.0
    return shifted - np.log1p(others.sum(axis=1, keepdims=True))


def probabilities_of(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T)."""
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def _check(logits: np.ndarray, labels: np.ndarray) -> None:
    if len(labels) == 0:
        raise CalibrationError("no logits to calibrate on (an empty validation set?)")
    if not np.isfinite(logits).all():
        raise CalibrationError("non-finite logits (NaN or inf): re-run the model that wrote them")


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(true class) under softmax(logits / T)."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-log_p[np.arange(len(labels)), labels].mean())


TEMPERATURE_BOUNDS = (0.01, 100.0)  # the search range of fit_temperature
NO_CALIBRATION_FIX = (
    "give it more calibration cells (a larger --cal-fraction or --val-fraction) or leave calibration out"
)


def _refuse_separable(logits: np.ndarray, labels: np.ndarray) -> None:
    """Every cell right: the NLL falls towards 0 as T -> 0, so no finite temperature maximises
    the likelihood, and any fitted one makes every probability 1.0 (review science-v0.3, M2)."""
    if (logits.argmax(axis=1) == labels).all():
        raise CalibrationError(
            f"all {len(labels)} calibration cells are classified right, so no finite temperature fits them "
            f"(every probability would become 1.0): {NO_CALIBRATION_FIX}"
        )


def _refuse_at_bound(temperature: float) -> float:
    low, high = TEMPERATURE_BOUNDS
    if not low * 1.01 < temperature < high / 1.01:
        raise CalibrationError(
            f"the temperature ran to the bound of its search ({temperature:.3g} in [{low:g}, {high:g}]): the "
            f"calibration cells cannot calibrate it (nearly all right, or all wrong with growing confidence); "
            f"{NO_CALIBRATION_FIX}"
        )
    return temperature


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) (Guo et al. 2017, Sec. 4.2).

    Fit it on validation logits, never on the test fold it will be judged on. The NLL is
    convex in 1/T, so a bounded scalar search over log T (T in [0.01, 100]) finds the optimum.
    Refused (:class:`CalibrationError`) when the optimum does not exist (every cell right) or
    lies at a bound of the search.
    """
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    _check(logits, labels)
    _refuse_separable(logits, labels)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
        bounds=(math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1])),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return _refuse_at_bound(float(math.exp(result.x)))


@dataclass
class BiasCorrectedTemperature:
    """softmax(z / T + b): one temperature and a bias per class (Alexandari, Kundaje & Shrikumar
    2020, "bias-corrected temperature scaling"): the per-class calibration EM prior adjustment
    needs, which one temperature alone cannot give."""

    temperature: float
    bias: np.ndarray

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """softmax(z / T + b) of each row of ``logits``."""
        return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / self.temperature + self.bias))


def fit_bias_corrected_temperature(
    logits: np.ndarray, labels: np.ndarray, ridge: float = 1e-3
) -> BiasCorrectedTemperature:
    """T and b minimising the NLL of softmax(z / T + b) on held-out logits (convex in 1/T and b),
    with a small ridge on b so that a class without cells keeps a finite bias. Refused as
    :func:`fit_temperature` is: every cell right, or T at a bound of its search."""
    from scipy.optimize import minimize

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    _check(logits, labels)
    onehot = np.eye(logits.shape[1])[labels]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        scale, bias = theta[0], theta[1:]
        log_p = log_softmax(scale * logits + bias)
        residual = (np.exp(log_p) - onehot) / len(labels)
        value = -(log_p * onehot).sum() / len(labels) + ridge * (bias**2).sum()
        return value, np.concatenate([[(residual * logits).sum()], residual.sum(axis=0) + 2 * ridge * bias])

    start = np.concatenate([[1.0 / fit_temperature(logits, labels)], np.zeros(logits.shape[1])])
    bounds = [(1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0])] + [(None, None)] * logits.shape[1]
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    temperature = _refuse_at_bound(float(1.0 / result.x[0]))
    return BiasCorrectedTemperature(temperature, result.x[1:] - result.x[1:].mean())


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of sum_c (p_c - [c = y])^2 (0 perfect, 2 worst)."""
    target = np.zeros_like(probabilities)
    target[np.arange(len(labels)), labels] = 1.0
    return float(((probabilities - target) ** 2).sum(axis=1).mean())


@dataclass
class Reliability:
    """A reliability diagram: per equal-width confidence bin, its edges, mean confidence, accuracy and count."""

    edges: np.ndarray
    confidence: np.ndarray  # NaN for an empty bin
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def expected_calibration_error(self) -> float:
        """sum_b (n_b / N) |accuracy_b - confidence_b|."""
        used = self.count > 0
        return float((self.count[used] / self.count.sum() * np.abs(self.accuracy[used] - self.confidence[used])).sum())


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> Reliability:
    """Confidence (max probability) against accuracy in ``bins`` equal-width bins of (0, 1]."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (low, high] bins
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct.astype(np.float64), minlength=bins) / count
    return Reliability(edges, mean_confidence, accuracy, count)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    return reliability(probabilities, labels, bins).expected_calibration_error


def calibration_scores(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = 15) -> dict:
    """NLL, Brier and ECE of softmax(logits / T)."""
    probabilities = probabilities_of(logits, temperature)
    return {
        "nll": negative_log_likelihood(logits, labels, temperature),
        "brier": brier_score(probabilities, labels),
        "ece": expected_calibration_error(labels, probabilities, bins),
    }


def paired_bootstrap(
    before: np.ndarray, after: np.ndarray, labels: np.ndarray, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> dict:
    """Percentile intervals of NLL, Brier and ECE before and after (two logits arrays of the same
    cells) and of their differences (after - before), resampling the cells with replacement, the
    same resample for both. An ECE change inside its interval is not a change: with N cells even a
    perfectly calibrated model shows an ECE of the order of sqrt(bins / N)."""
    rng = np.random.default_rng(seed)
    draws = {key: [] for key in ("before", "after", "difference")}
    for _ in range(resamples):
        cells = rng.integers(0, len(labels), len(labels))
        first, second = (
            calibration_scores(before[cells], labels[cells]),
            calibration_scores(after[cells], labels[cells]),
        )
        draws["before"].append(first)
        draws["after"].append(second)
        draws["difference"].append({k: second[k] - first[k] for k in first})
    tail = 100 * (1 - level) / 2
    return {
        part: {
            key: [
                float(np.percentile([d[key] for d in values], tail)),
                float(np.percentile([d[key] for d in values], 100 - tail)),
            ]
            for key in values[0]
        }
        for part, values in draws.items()
    } | {"resamples": resamples, "level": level}


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/N and the error rate of the k most confident cells, for k = 1..N."""
    order = np.argsort(-probabilities.max(axis=1), kind="stable")
    wrong = np.cumsum((probabilities.argmax(axis=1) != labels)[order])
    accepted = np.arange(1, len(labels) + 1)
    return accepted / len(labels), wrong / accepted


def aurc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean of the risks at every coverage (lower is better)."""
    _, risk = risk_coverage(probabilities, labels)
    return float(risk.mean())
