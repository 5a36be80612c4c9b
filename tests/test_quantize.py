"""int8 deployment (spermfuse/deploy/quantize.py): the accuracy guard and the interval it reports."""

import numpy as np
import pytest

from spermfuse.deploy.quantize import Comparison, PrecisionError, check_agreement, paired_difference_interval


def comparison(agreement: float) -> Comparison:
    return Comparison(200, agreement, 0.8, 0.79, (-0.03, 0.01), 0.5, True)


def test_a_model_below_the_agreement_floor_is_refused_unless_forced(caplog):
    check_agreement(comparison(0.995), 0.99)
    with pytest.raises(PrecisionError, match="agreement with fp32 is 0.9800 .* below --min-agreement 0.99"):
        check_agreement(comparison(0.98), 0.99)
    check_agreement(comparison(0.98), 0.99, force=True)
    assert "written anyway" in caplog.text


def test_the_accuracy_change_interval_covers_the_true_change_about_95_times_in_100():
    rng = np.random.default_rng(0)
    cells, draws, misses = 300, 2000, 0
    # Per cell: both right, only fp32 right, only int8 right, both wrong.
    shares = np.array([0.70, 0.06, 0.03, 0.21])
    true_change = shares[2] - shares[1]
    for _ in range(draws):
        outcome = rng.choice(4, size=cells, p=shares)
        fp32, int8 = np.isin(outcome, [0, 1]), np.isin(outcome, [0, 2])
        low, high = paired_difference_interval(fp32, int8)
        misses += not low <= true_change <= high
    assert 0.03 <= misses / draws <= 0.075  # nominal 0.05; the standard error of 2,000 draws is 0.005
