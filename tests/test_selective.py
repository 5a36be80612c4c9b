"""Certified referral holds its promise over many calibration draws; the old rule did not."""

import math

import numpy as np
import pytest
from scipy import stats

from spermfuse.selective import Certificate, accepted_accuracy, certify_threshold, clopper_pearson_upper

# A calibrated model: a cell's confidence c ~ Beta(5, 2) and it is right with probability c.
A, B = 5.0, 2.0


def population_accuracy(threshold: float) -> float:
    """E[c | c >= t] for c ~ Beta(A, B): the accuracy on all future cells above ``t``."""
    if math.isinf(threshold):
        return 1.0  # nothing accepted, nothing wrong
    return A / (A + B) * stats.beta.sf(threshold, A + 1, B) / stats.beta.sf(threshold, A, B)


def draw(rng, n):
    confidence = rng.beta(A, B, n)
    return confidence, rng.random(n) < confidence


def laxest_observed(confidence, correct, target):
    """The rule of v0.2: the lowest threshold whose observed accuracy reaches the target."""
    order = np.argsort(-confidence)
    accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    reaching = np.flatnonzero(accuracy >= target)
    return float(confidence[order][reaching.max()]) if len(reaching) else math.inf


def repeated(rule, repeats=300, n=1000, target=0.8, seed=0):
    """Over ``repeats`` calibration draws: the thresholds ``rule`` picks, the share that miss the
    target on the population, and the standard error of that share (at its worst, p = 0.5)."""
    rng = np.random.default_rng(seed)
    thresholds = np.array([rule(*draw(rng, n), target) for _ in range(repeats)])
    failures = np.array([population_accuracy(t) < target for t in thresholds])
    return thresholds, float(failures.mean()), math.sqrt(0.25 / repeats)


@pytest.mark.parametrize("method", ["sgr", "grid"])
def test_the_certified_threshold_misses_the_target_at_most_delta_of_the_time(method):
    delta = 0.1
    thresholds, rate, standard_error = repeated(lambda c, r, t: certify_threshold(c, r, t, delta, method).threshold)
    assert rate <= delta + 3 * standard_error
    assert np.isfinite(thresholds).mean() >= 0.9  # not by referring everything: most draws certify a threshold


def test_the_laxest_observed_threshold_is_the_counter_example():
    _, rate, standard_error = repeated(laxest_observed)
    assert rate > 0.1 + 3 * standard_error  # misses the target about half the time


def test_certification_keeps_cells_when_the_target_is_easy():
    confidence, correct = draw(np.random.default_rng(1), 2000)
    certificate = certify_threshold(confidence, correct, 0.8)
    assert not certificate.refers_all and certificate.n_accepted > 500
    assert population_accuracy(certificate.threshold) >= 0.8 and certificate.risk_upper_bound <= 0.2


def test_an_impossible_target_refers_every_cell():
    confidence, correct = draw(np.random.default_rng(2), 300)
    certificate = certify_threshold(confidence, correct, 0.999)
    assert certificate.refers_all and certificate.n_accepted == 0
    assert Certificate.from_dict(certificate.to_dict()) == certificate and certificate.to_dict()["threshold"] is None


def test_the_clopper_pearson_bound_is_the_beta_quantile():
    assert clopper_pearson_upper(3, 50, 0.95) == pytest.approx(stats.beta.ppf(0.95, 4, 47))
    assert clopper_pearson_upper(0, 0, 0.95) == 1.0 and clopper_pearson_upper(5, 5, 0.9) == 1.0
    # the exact binomial tail at the bound is 1 - level: P(X <= 3 | n=50, p=bound) = 0.05
    assert stats.binom.cdf(3, 50, clopper_pearson_upper(3, 50, 0.95)) == pytest.approx(0.05)


def test_accepted_accuracy_reports_a_two_sided_interval():
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    result = accepted_accuracy(confidence, np.array([True, True, False, True]), 0.65)
    assert (
        result["accepted"] == 3
        and result["accepted_accuracy"] == pytest.approx(2 / 3)
        and result["referred_share"] == 0.25
    )
    low, high = result["interval"]
    assert low == pytest.approx(stats.beta.ppf(0.025, 2, 2)) and high == pytest.approx(stats.beta.ppf(0.975, 3, 1))
