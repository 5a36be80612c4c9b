"""Conformal prediction sets cover the true class as promised, over many calibration draws."""

import math

import numpy as np
import pytest

from spermfuse.conformal import (
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


def coverages(method, alpha=0.1, n=300, repeats=120, seed=0, by=None):
    rng = np.random.default_rng(seed)
    result = []
    for repeat in range(repeats):
        calibrator = calibrate_sets(*calibrated_cells(rng, n), alpha=alpha, method=method, by=by, seed=repeat)
        probabilities, labels = calibrated_cells(rng, 400)
        sets = predict_sets(probabilities, calibrator, seed=10_000 + repeat)
        result.append((sets[np.arange(len(labels)), labels], labels))
    return result


@pytest.mark.parametrize("method", ["aps", "raps", "lac"])
def test_coverage_lies_between_one_minus_alpha_and_that_plus_one_over_n_plus_one(method):
    alpha, n = 0.1, 300
    per_repeat = np.array([covered.mean() for covered, _ in coverages(method, alpha, n)])
    error = 3 * per_repeat.std(ddof=1) / math.sqrt(len(per_repeat))  # Monte-Carlo error of the mean
    assert 1 - alpha - error <= per_repeat.mean() <= 1 - alpha + 1 / (n + 1) + error


def test_mondrian_sets_cover_within_every_group():
    by = ["head", "head", "head", "tail", "tail", "normal"]
    alpha = 0.1
    runs = coverages("aps", alpha, n=600, repeats=80, by=by)
    for group in ("head", "tail", "normal"):
        members = [c for c, name in enumerate(by) if name == group]
        per_repeat = np.array([covered[np.isin(labels, members)].mean() for covered, labels in runs])
        error = 3 * per_repeat.std(ddof=1) / math.sqrt(len(per_repeat))
        assert per_repeat.mean() >= 1 - alpha - error, group


def test_an_aps_set_by_hand():
    probabilities = np.array([[0.5, 0.3, 0.15, 0.05]])
    # u = 0: class scores are the mass above each class: 0, 0.5, 0.8, 0.95
    assert np.allclose(class_scores(probabilities, "aps", np.zeros(1)), [[0.0, 0.5, 0.8, 0.95]])
    calibrator = SetCalibrator("aps", 0.1, {"": 0.8})
    sets = predict_sets(probabilities, calibrator)
    u = np.random.default_rng(calibrator.seed + 1).random(1)[0]  # the uniform predict_sets draws
    expected = [0.0 + u * 0.5 <= 0.8, 0.5 + u * 0.3 <= 0.8, 0.8 + u * 0.15 <= 0.8, 0.95 + u * 0.05 <= 0.8]
    assert sets[0].tolist() == expected


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
