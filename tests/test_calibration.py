"""Temperature scaling, calibration scores and risk-coverage."""

import numpy as np
import pytest

from spermfuse.core import calibration
from spermfuse.core.calibration import CalibrationError


def logits_with_temperature(temperature, n=20000, classes=6, seed=0):
    """Logits whose calibrated temperature is ``temperature``: labels drawn from softmax(z), logits z * T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, classes))
    p = calibration.probabilities_of(z)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return z * temperature, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_the_logits_were_made_with(temperature):
    logits, labels = logits_with_temperature(temperature)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_scaling_lowers_the_nll_and_keeps_every_prediction():
    logits, labels = logits_with_temperature(3.0, n=5000)
    t = calibration.fit_temperature(logits, labels)
    before, after = calibration.calibration_scores(logits, labels), calibration.calibration_scores(logits, labels, t)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert np.array_equal(calibration.probabilities_of(logits, t).argmax(1), logits.argmax(1))


def test_brier_score_is_zero_when_right_and_certain_and_two_when_certain_and_wrong():
    certain = np.eye(3)[[0, 1, 2]]
    assert calibration.brier_score(certain, np.array([0, 1, 2])) == 0.0
    assert calibration.brier_score(certain, np.array([1, 2, 0])) == 2.0


def test_reliability_bins_and_ece_from_a_hand_made_case():
    # Two cells at confidence 0.9 (one right), two at 0.6 (both right): |0.5 - 0.9| and |1.0 - 0.6|, each half the cells.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    diagram = calibration.reliability(probabilities, labels, bins=10)
    assert diagram.count.sum() == 4 and diagram.count[8] == 2 and diagram.count[5] == 2
    assert diagram.expected_calibration_error == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_risk_coverage_accepts_the_most_confident_first():
    probabilities = np.array([[0.95, 0.05], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 0])  # the third most confident is wrong
    coverage, risk = calibration.risk_coverage(probabilities, labels)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 1 / 4])
    assert calibration.aurc(probabilities, labels) == pytest.approx(np.mean([0, 0, 1 / 3, 1 / 4]))


def test_non_finite_logits_are_refused():
    with pytest.raises(CalibrationError, match="non-finite"):
        calibration.fit_temperature(np.array([[np.nan, 1.0]]), np.array([0]))


def test_paired_bootstrap_intervals_contain_the_change_and_tighten_with_more_cells():
    rng = np.random.default_rng(0)

    def intervals(n):
        labels = rng.integers(0, 3, n)
        logits = np.eye(3)[labels] * 3 + rng.normal(0, 1.5, (n, 3))
        result = calibration.paired_bootstrap(logits, logits / 2.0, labels, resamples=100)
        change = {
            k: calibration.calibration_scores(logits / 2.0, labels)[k]
            - calibration.calibration_scores(logits, labels)[k]
            for k in ("nll", "ece")
        }
        return result, change

    small, small_change = intervals(200)
    large, _ = intervals(3000)
    for key in ("nll", "ece"):
        low, high = small["difference"][key]
        assert low <= small_change[key] <= high
        assert np.diff(large["difference"][key])[0] < np.diff(small["difference"][key])[0]


def test_bias_corrected_temperature_recovers_the_temperature_and_class_biases_labels_were_drawn_with():
    from spermfuse.core.calibration import fit_bias_corrected_temperature, log_softmax

    rng = np.random.default_rng(0)
    true_labels = rng.integers(0, 4, 4000)
    logits = rng.normal(size=(4000, 4)) + 2.0 * np.eye(4)[true_labels]
    bias = np.array([0.75, 0.25, -0.5, -0.5])  # mean zero, as the fit reports it
    probabilities = np.exp(log_softmax(logits / 2.0 + bias))
    labels = (probabilities.cumsum(axis=1) < rng.random(4000)[:, None]).sum(axis=1)
    fitted = fit_bias_corrected_temperature(logits, labels)
    assert fitted.temperature == pytest.approx(2.0, rel=0.1)
    assert np.allclose(fitted.bias, bias, atol=0.15)
    assert fitted.probabilities(logits).sum(axis=1) == pytest.approx(np.ones(4000))


def separable_logits(cells=24, classes=4, margin=20.0, seed=0):
    """Held-out logits that classify every cell right with a wide margin (a small, easy real set)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, cells)
    logits = rng.normal(0, 1.0, (cells, classes))
    logits[np.arange(cells), labels] += margin
    return logits, labels


def test_the_nll_of_a_right_cell_stays_above_zero_past_a_margin_of_37():
    # log(1 + e^-40) rounds to 0 in float64; log1p keeps it (about 4.2e-18), so the NLL keeps falling with T.
    logits = np.array([[40.0, 0.0]])
    nll = calibration.negative_log_likelihood(logits, np.array([0]))
    assert nll == pytest.approx(np.exp(-40.0), rel=1e-9)
    assert calibration.negative_log_likelihood(logits, np.array([0]), 0.5) < nll


def test_log_softmax_is_right_with_tied_top_classes():
    assert np.allclose(np.exp(calibration.log_softmax(np.array([[3.0, 3.0, -np.inf]]))), [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("margin", [8.0, 20.0, 200.0])
def test_fit_temperature_refuses_cells_that_are_all_right(margin):
    logits, labels = separable_logits(margin=margin)
    with pytest.raises(CalibrationError, match="all 24 calibration cells are classified right"):
        calibration.fit_temperature(logits, labels)


@pytest.mark.parametrize("margin", [8.0, 20.0, 200.0])
def test_bias_corrected_temperature_refuses_cells_that_are_all_right(margin):
    logits, labels = separable_logits(margin=margin)
    with pytest.raises(CalibrationError, match="classified right"):
        calibration.fit_bias_corrected_temperature(logits, labels)


def test_a_temperature_at_the_bound_of_its_search_is_refused():
    # 399 cells right by a margin of 0.05 and one wrong by 1e-5: the likelihood keeps rising as T falls below 0.01.
    logits = np.array([[0.05, 0.0]] * 399 + [[1e-5, 0.0]])
    labels = np.array([0] * 399 + [1])
    with pytest.raises(CalibrationError, match="bound of its search"):
        calibration.fit_temperature(logits, labels)
    # Every cell wrong with the same confidence: the likelihood keeps rising as T grows past 100.
    with pytest.raises(CalibrationError, match="bound of its search"):
        calibration.fit_temperature(np.array([[0.0, 1.0]] * 30), np.zeros(30, dtype=int))


def test_one_wrong_cell_among_right_ones_still_fits_a_finite_temperature():
    logits, labels = separable_logits(cells=30, margin=3.0)
    labels[0] = (labels[0] + 1) % 4
    t = calibration.fit_temperature(logits, labels)
    assert calibration.TEMPERATURE_BOUNDS[0] * 1.01 < t < calibration.TEMPERATURE_BOUNDS[1] / 1.01
    assert calibration.probabilities_of(logits, t).max() < 1.0
