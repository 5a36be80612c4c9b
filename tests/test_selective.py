"""Certified referral holds its promise over many calibration draws; the old rule did not."""

import math

import numpy as np
import pytest
from scipy import stats

from spermfuse.benchmarks.referral import CALIBRATED_MIXTURE, simulate_referral
from spermfuse.core.selective import Certificate, accepted_accuracy, certify_threshold, clopper_pearson_upper

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


@pytest.mark.parametrize("method", ["ltt", "sgr", "grid"])
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


def test_ltt_at_a_labs_size_keeps_its_promise_and_accepts_four_times_what_sgr_accepts():
    """The issue's bar: n = 100 calibration cells, target 0.9, delta 0.1, a calibrated model."""
    ltt = simulate_referral(CALIBRATED_MIXTURE, "ltt", 100, 0.9, 0.1, repeats=1000, seed=3)
    sgr = simulate_referral(CALIBRATED_MIXTURE, "sgr", 100, 0.9, 0.1, repeats=1000, seed=3)
    assert ltt.failure <= 0.1 + 3 * ltt.failure_standard_error
    assert ltt.accepted_share >= 4 * sgr.accepted_share > 0


@pytest.mark.parametrize("n,target", [(500, 0.7), (2000, 0.99)])
def test_ltt_keeps_its_promise_where_the_target_is_easy_and_where_it_is_hard(n, target):
    ltt = simulate_referral(CALIBRATED_MIXTURE, "ltt", n, target, 0.1, repeats=400, seed=4)
    assert ltt.failure <= 0.1 + 3 * ltt.failure_standard_error


def test_ltt_is_the_fixed_sequence_test_in_the_order_the_confidences_predict_stopping_at_the_first_failure():
    """The vectorised certificate against the fixed sequence spelled out one threshold at a time:
    the non-empty thresholds ordered by the upper bound their cells' expected errors (the sum of
    1 - confidence) would give, stricter first on a tie; each passes when
    p = BinomCDF(errors; n, 1 - target) <= delta; the laxest passed before the first failure."""
    rng = np.random.default_rng(5)
    for repeat in range(40):
        confidence, correct = CALIBRATED_MIXTURE.draw(rng, int(rng.integers(20, 400)))
        target = float(rng.choice([0.6, 0.8, 0.9]))
        candidates = []
        for threshold in np.round(np.linspace(0.0, 1.0, 101), 2):
            accepted = confidence >= threshold
            n, expected = int(accepted.sum()), float((1 - confidence[accepted]).sum())
            if n:
                candidates.append((stats.beta.ppf(0.9, expected + 1, n - expected), -threshold, accepted))
        certified = []
        for _, minus_threshold, accepted in sorted(candidates, key=lambda c: c[:2]):
            if stats.binom.cdf((~correct[accepted]).sum(), accepted.sum(), 1 - target) > 0.1:
                break
            certified.append(-minus_threshold)
        expected_threshold = min(certified) if certified else math.inf
        assert certify_threshold(confidence, correct, target, 0.1, "ltt").threshold == expected_threshold, repeat


def test_the_simulated_model_is_calibrated_and_its_population_figures_are_exact():
    confidence, correct = CALIBRATED_MIXTURE.draw(np.random.default_rng(6), 400_000)
    for threshold in (0.0, 0.5, 0.9):
        accepted = confidence >= threshold
        assert accepted.mean() == pytest.approx(CALIBRATED_MIXTURE.accepted_share(threshold), abs=0.003)
        assert correct[accepted].mean() == pytest.approx(CALIBRATED_MIXTURE.accuracy(threshold), abs=0.003)


def test_the_clopper_pearson_bound_takes_arrays():
    bounds = clopper_pearson_upper(np.array([3, 0, 5]), np.array([50, 0, 5]), 0.95)
    assert bounds.tolist() == [clopper_pearson_upper(3, 50, 0.95), 1.0, 1.0]


@pytest.mark.parametrize("target", [0.7, 0.9])
def test_ltt_keeps_its_promise_when_confidence_says_nothing(target):
    """Every cell right with probability just below the target, whatever its confidence (which is
    uniform, so the sequence is ordered by confidences that mean nothing): any threshold certified
    is a failure."""
    rng = np.random.default_rng(7)
    repeats = 600
    certified = [
        np.isfinite(certify_threshold(rng.random(500), rng.random(500) < target - 0.001, target, 0.1, "ltt").threshold)
        for _ in range(repeats)
    ]
    assert np.mean(certified) <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / repeats)
