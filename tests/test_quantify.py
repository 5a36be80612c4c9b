"""Per-sample fractions (quantify.py): exact recovery, EM's fixed point, coverage as promised,
refusals, the group roll-up and the flags."""

from __future__ import annotations

import numpy as np
import pytest

from spermfuse.core.quantify import QuantifyError, adjusted_count, class_fractions, em_prior, flag
from spermfuse.reporting.sample_simulation import SimulationSetting, simulate

# A 4-class classifier with 70 % top-1 whose errors are not symmetric (rows = true class).
CONFUSION_SHARES = np.array(
    [
        [0.70, 0.20, 0.05, 0.05],
        [0.10, 0.70, 0.15, 0.05],
        [0.05, 0.10, 0.70, 0.15],
        [0.15, 0.05, 0.10, 0.70],
    ]
)
CLASSES = ["Normal", "Head", "Neck", "Tail"]


def cells_with_counts(counts: np.ndarray) -> np.ndarray:
    """Predicted class indices with exactly ``counts`` of each class."""
    return np.repeat(np.arange(len(counts)), counts.astype(int))


def test_acc_recovers_the_true_fractions_from_the_expected_predicted_distribution():
    truth = np.array([0.1, 0.4, 0.3, 0.2])
    expected_shares = CONFUSION_SHARES.T @ truth  # what a very large sample's predictions look like
    assert np.allclose(adjusted_count(expected_shares, CONFUSION_SHARES), truth, atol=1e-6)
    # the same through class_fractions: 1,000 cells predicted exactly as expected, M from 100 cells a class
    estimate = class_fractions(
        cells_with_counts(np.round(expected_shares * 1000)), CONFUSION_SHARES * 100, CLASSES, n_boot=10
    )
    assert np.allclose(estimate.estimate, truth, atol=1e-6)
    assert not np.allclose(np.bincount(cells_with_counts(np.round(expected_shares * 1000))) / 1000, truth, atol=0.02)


def test_acc_stays_on_the_simplex_when_the_counts_overshoot():
    # Fewer predicted Normal than even a Normal-free sample would give: the estimate is 0, not negative.
    shares = np.array([0.0, 0.5, 0.3, 0.2])
    estimate = adjusted_count(shares, CONFUSION_SHARES)
    assert estimate.min() >= 0.0 and estimate[0] == 0.0
    assert estimate.sum() == pytest.approx(1.0)


def test_em_converges_to_the_truth_on_perfectly_calibrated_probabilities():
    rng = np.random.default_rng(3)
    likelihood = rng.dirichlet(np.full(12, 0.3), size=4)  # P(feature | class), 12 feature values
    calibration_prior = np.array([0.25, 0.25, 0.25, 0.25])
    truth = np.array([0.05, 0.55, 0.25, 0.15])
    posterior = calibration_prior[:, None] * likelihood
    posterior = (posterior / posterior.sum(axis=0)).T  # calibrated P(class | feature) under that prior
    feature_shares = truth @ likelihood  # the sample, as an infinitely large one
    estimate = em_prior(posterior, calibration_prior, feature_shares[None], tolerance=1e-12, max_iterations=20000)
    assert np.allclose(estimate[0], truth, atol=1e-4)
    assert not np.allclose(feature_shares @ posterior, truth, atol=0.02)  # pcc alone is biased here


def test_pcc_is_the_mean_probability():
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4]])
    estimate = class_fractions(probabilities, CONFUSION_SHARES * 50, CLASSES, method="pcc", n_boot=20)
    assert np.allclose(estimate.estimate, probabilities.mean(axis=0))


@pytest.mark.parametrize("method", ["acc", "cc"])
def test_the_95_percent_interval_covers_as_promised_only_after_adjustment(method):
    """300 samples of 200 cells from a patient with 6 % normal forms, M estimated each time from
    100 new cells a class: ACC's interval covers at 95 % (Monte-Carlo sd 0.013), the raw count's does not."""
    rng = np.random.default_rng(0)
    truth = np.array([0.06, 0.50, 0.24, 0.20])
    hits = []
    for repeat in range(300):
        confusion = np.stack([rng.multinomial(100, row) for row in CONFUSION_SHARES])
        true_classes = rng.choice(4, size=200, p=truth)
        predicted = np.array([rng.choice(4, p=CONFUSION_SHARES[c]) for c in true_classes])
        estimate = class_fractions(predicted, confusion, CLASSES, method=method, n_boot=300, seed=repeat)
        hits.append(estimate.low[0] <= truth[0] <= estimate.high[0])
    coverage = np.mean(hits)
    if method == "acc":
        assert 0.91 <= coverage <= 0.995
    else:
        assert coverage < 0.5  # the raw count of Normal is biased up by the other classes' errors


def test_two_classes_the_classifier_cannot_tell_apart_are_refused_with_both_names():
    confusion = np.array([[40, 40, 10, 10], [41, 39, 10, 10], [5, 5, 80, 10], [5, 5, 10, 80]])
    with pytest.raises(QuantifyError, match="cannot tell Normal from Head apart.*--estimate-on groups"):
        class_fractions(cells_with_counts(np.array([50, 50, 50, 50])), confusion, CLASSES)


def test_a_true_class_without_held_out_cells_is_refused_by_name():
    confusion = CONFUSION_SHARES * 100
    confusion[2] = 0
    with pytest.raises(QuantifyError, match="no held-out cells of true class Neck"):
        class_fractions(cells_with_counts(np.array([50, 50, 50, 50])), confusion, CLASSES)


def test_a_group_interval_is_its_own_not_a_sum_of_class_intervals():
    # Normal and Head are often swapped: each alone is uncertain, their sum much less so.
    shares = np.array([[0.55, 0.45, 0.0, 0.0], [0.45, 0.55, 0.0, 0.0], [0.0, 0.0, 0.9, 0.1], [0.0, 0.0, 0.1, 0.9]])
    groups = {"Normal": "sperm head", "Head": "sperm head", "Neck": "neck", "Tail": "tail"}
    predicted = cells_with_counts(np.array([60, 60, 40, 40]))
    estimate = class_fractions(predicted, shares * 200, CLASSES, n_boot=500, groups=groups)
    class_widths = estimate.high[:2] - estimate.low[:2]
    group_value, group_low, group_high = estimate.of("sperm head")
    assert group_value == pytest.approx(estimate.estimate[:2].sum())
    assert group_high - group_low < 0.5 * class_widths.sum()
    assert estimate.groups.classes == ["sperm head", "neck", "tail"]


def test_a_group_map_must_name_every_class():
    with pytest.raises(QuantifyError, match="no group for class Tail"):
        class_fractions(
            cells_with_counts(np.array([5, 5, 5, 5])),
            CONFUSION_SHARES * 50,
            CLASSES,
            groups={"Normal": "n", "Head": "h", "Neck": "k"},
        )


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.0, 0.035, "below"), (0.045, 0.12, "above"), (0.02, 0.07, "undetermined"), (0.04, 0.05, "undetermined")],
)
def test_a_flag_is_set_only_when_the_whole_interval_is_on_one_side(low, high, expected):
    assert flag(low, high) == expected


def test_methods_refuse_the_wrong_input_with_one_line():
    with pytest.raises(QuantifyError, match="choose one of cc, acc, pcc, em"):
        class_fractions(cells_with_counts(np.array([5, 5, 5, 5])), CONFUSION_SHARES * 50, CLASSES, method="median")
    with pytest.raises(QuantifyError, match=r"em: needs probabilities \[cells, 4\]"):
        class_fractions(cells_with_counts(np.array([5, 5, 5, 5])), CONFUSION_SHARES * 50, CLASSES, method="em")
    with pytest.raises(QuantifyError, match="no cells"):
        class_fractions(np.array([], dtype=int), CONFUSION_SHARES * 50, CLASSES)


def test_the_simulation_scores_each_method_against_the_patients_true_fractions():
    """Held-out 'cells' of a 4-class classifier given as logits: ACC's coverage of % normal beats
    the raw count's, and the table row carries every figure the README shows."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 150)
    logits = rng.normal(size=(600, 4)) + 2.2 * np.eye(4)[labels]
    logits[labels == 1, 0] += 1.5  # Head cells often look Normal: the count of Normal is biased up
    groups = {"Normal": "normal", "Head": "defect", "Neck": "defect", "Tail": "defect"}
    rows = {
        method: simulate(logits, labels, CLASSES, groups, SimulationSetting(method, None, samples=60, n_boot=200))
        for method in ("cc", "acc")
    }
    assert rows["acc"]["coverage"] >= 0.85 > rows["cc"]["coverage"]
    assert abs(rows["acc"]["bias"]) < abs(rows["cc"]["bias"])
    assert set(rows["acc"]["group_coverage"]) == {"normal", "defect"}
    assert {"rmse", "width", "wrong_side", "refused"} <= set(rows["acc"])


@pytest.mark.parametrize("method", ["pcc", "em"])
def test_the_probability_methods_refuse_a_class_without_held_out_cells(method):
    confusion = CONFUSION_SHARES * 50
    confusion[1] = 0  # no held-out cell of true class 1: its recalibrated probabilities would be pushed to 0
    probabilities = np.full((30, len(CLASSES)), 1 / len(CLASSES))
    with pytest.raises(QuantifyError, match=f"no held-out cells of true class {CLASSES[1]}"):
        class_fractions(probabilities, confusion, CLASSES, method=method, n_boot=20)
