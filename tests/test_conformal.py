"""Conformal prediction sets cover the true class as promised, over many calibration draws."""

import math

import numpy as np
import pytest

from spermfuse.core.conformal import (
    SetCalibrator,
    calibrate_sets,
    class_scores,
    conformal_quantile,
    predict_sets,
    set_metrics,
)

CLASSES = [f"c{i}" for i in range(6)]


def calibrated_cells(rng, n, classes=6, concentration=0.7):
    """A calibrated model: each cell's probabilities from a Dirichlet, its label drawn from them."""
    probabilities = rng.dirichlet(np.full(classes, concentration), n)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return probabilities, labels


def coverages(method, alpha=0.1, n=300, repeats=200, cells=100, seed=0, by=None):
    """Per calibration draw: whether each new cell's set, asked for one cell per call, holds its
    true class (a lab predicting one image at a time), and the cells' labels."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(repeats):
        calibrator = calibrate_sets(*calibrated_cells(rng, n), alpha=alpha, method=method, by=by)
        probabilities, labels = calibrated_cells(rng, cells)
        one_at_a_time = np.concatenate([predict_sets(p[None, :], calibrator) for p in probabilities])
        result.append((one_at_a_time[np.arange(len(labels)), labels], labels))
    return result


@pytest.mark.parametrize("method", ["aps", "raps", "lac"])
def test_one_image_calls_cover_at_least_one_minus_alpha(method):
    alpha = 0.1
    per_repeat = np.array([covered.mean() for covered, _ in coverages(method, alpha)])
    error = 3 * per_repeat.std(ddof=1) / math.sqrt(len(per_repeat))  # Monte-Carlo error of the mean
    assert per_repeat.mean() >= 1 - alpha - error


def test_lac_coverage_is_also_at_most_one_minus_alpha_plus_one_over_n_plus_one():
    alpha, n = 0.1, 300  # LAC's scores 1 - p_y have no ties, so its coverage is tight
    per_repeat = np.array([covered.mean() for covered, _ in coverages("lac", alpha, n)])
    error = 3 * per_repeat.std(ddof=1) / math.sqrt(len(per_repeat))
    assert per_repeat.mean() <= 1 - alpha + 1 / (n + 1) + error


@pytest.mark.parametrize("method", ["aps", "raps"])
def test_mondrian_sets_cover_within_every_group_one_image_at_a_time(method):
    by = ["head", "head", "head", "tail", "tail", "normal"]
    alpha = 0.1
    runs = coverages(method, alpha, n=600, repeats=200, by=by)
    for group in ("head", "tail", "normal"):
        members = [c for c, name in enumerate(by) if name == group]
        per_repeat = np.array([covered[np.isin(labels, members)].mean() for covered, labels in runs])
        error = 3 * np.nanstd(per_repeat, ddof=1) / math.sqrt(np.isfinite(per_repeat).sum())
        assert np.nanmean(per_repeat) >= 1 - alpha - error, group


@pytest.mark.parametrize("method", ["aps", "raps", "lac"])
def test_a_cells_set_does_not_depend_on_the_other_cells_of_the_call(method):
    rng = np.random.default_rng(1)
    calibrator = calibrate_sets(*calibrated_cells(rng, 200), alpha=0.1, method=method)
    probabilities, _ = calibrated_cells(rng, 50)
    batch = predict_sets(probabilities, calibrator)
    order = rng.permutation(50)
    assert np.array_equal(predict_sets(probabilities[order], calibrator), batch[order])
    assert np.array_equal(np.concatenate([predict_sets(p[None], calibrator) for p in probabilities]), batch)


def test_an_aps_set_by_hand():
    probabilities = np.array([[0.5, 0.3, 0.15, 0.05]])
    # the mass ranked above each class plus its own: 0.5, 0.8, 0.95, 1.0
    assert np.allclose(class_scores(probabilities, "aps"), [[0.5, 0.8, 0.95, 1.0]])
    assert predict_sets(probabilities, SetCalibrator("aps", 0.1, {"": 0.8})).tolist() == [[True, True, False, False]]


def test_the_quantile_is_the_ceil_n_plus_one_rank_and_infinite_when_too_few_cells():
    scores = np.arange(1, 10) / 10  # 9 cells
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.8)  # ceil(10 * 0.8) = 8th smallest
    assert math.isinf(conformal_quantile(scores, 0.05))  # ceil(10 * 0.95) = 10 > 9: every class in every set
    calibrator = calibrate_sets(np.full((3, 6), 1 / 6), np.array([0, 1, 2]), alpha=0.1, method="lac")
    assert predict_sets(np.full((2, 6), 1 / 6), calibrator).all()
    assert SetCalibrator.from_dict(calibrator.to_dict()) == calibrator


def test_set_metrics_count_coverage_and_sizes():
    sets = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=bool)
    metrics = set_metrics(sets, np.array([0, 2, 2, 1]), ["a", "b", "c"])
    assert metrics["coverage"] == 0.5 and metrics["mean_size"] == 1.25 and metrics["empty_share"] == 0.25
    assert metrics["size_histogram"] == {0: 1, 1: 1, 2: 2} and metrics["coverage_by_size"] == {0: 0.0, 1: 0.0, 2: 1.0}
    assert metrics["per_class_coverage"] == {"a": 1.0, "b": 0.0, "c": 0.5}
