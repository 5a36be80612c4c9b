"""The model card's interval keeps its promise."""

from __future__ import annotations

import numpy as np

from spermfuse.model_card import wilson_interval


def test_the_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    for accuracy, cells in ((0.7, 243), (0.1, 60), (0.95, 100)):
        hits = []
        for right in rng.binomial(cells, accuracy, size=4000):
            low, high = wilson_interval(int(right), cells)
            hits.append(low <= accuracy <= high)
        assert 0.93 <= np.mean(hits) <= 0.975  # Monte-Carlo sd 0.0035 around 0.95


def test_the_wilson_interval_stays_inside_zero_and_one():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(np.isnan(wilson_interval(0, 0)))
