"""The pointing game's arithmetic and baselines on hand-made masks and images."""

import numpy as np
import pytest

from spermfuse.explain.pointing_game import (
    bootstrap_interval,
    darkest_point,
    darkness_map,
    dilate,
    energy_share,
    hits,
    score,
    summarise,
    tolerance,
)
from spermfuse.synthetic import PART_VALUES


def mask_with_neck_at(row: int, column: int, shape=(40, 60)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[row, column] = PART_VALUES["neck"]
    return mask


def test_the_tolerance_is_half_the_coarsest_maps_stride_in_original_pixels():
    # A 64 px letterbox of a 128 x 96 image scales by 0.5; a 4 x 4 map's cell spans 16 input px = 32 original px.
    assert tolerance(128, 96, 64, 4) == pytest.approx(16.0)
    assert tolerance(64, 64, 64, 2) == pytest.approx(16.0)
    assert tolerance(240, 240, 240, 8) == pytest.approx(15.0)


def test_dilation_reaches_exactly_the_pixels_within_the_radius():
    inside = mask_with_neck_at(20, 30) == PART_VALUES["neck"]
    grown = dilate(inside, 3.0)
    rows, columns = np.nonzero(grown)
    distances = np.hypot(rows - 20, columns - 30)
    assert distances.max() <= 3.0 and grown.sum() == 29  # the lattice points of a disc of radius 3
    assert np.array_equal(dilate(inside, 0.0), inside)


def test_a_peak_within_the_tolerance_of_a_one_pixel_neck_hits_and_one_beyond_misses():
    mask = mask_with_neck_at(20, 30)
    near, far = np.zeros((40, 60)), np.zeros((40, 60))
    near[20, 34], far[20, 36] = 1.0, 1.0
    assert hits(near, mask, "neck", 4.0) and not hits(far, mask, "neck", 4.0)
    assert not hits(near, mask, "neck", 0.0)  # the exact-pixel rule that a coarse map cannot meet


def test_the_darkest_rule_finds_a_dark_blob_and_ignores_one_dark_pixel():
    grey = np.full((40, 60), 200.0)
    grey[10:16, 40:46] = 40.0  # a stained head
    grey[30, 5] = 0.0  # a single noisy pixel, darker but alone
    row, column = darkest_point(grey)
    assert 10 <= row < 16 and 40 <= column < 46


def test_energy_is_the_maps_mass_inside_the_part():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[3, 3] = 3.0, 1.0
    inside = np.zeros((4, 4), dtype=bool)
    inside[0, 0] = True
    assert energy_share(heat, inside) == pytest.approx(0.75)
    assert energy_share(np.zeros((4, 4)), inside) == 0.0


def test_a_case_scores_the_map_and_every_model_free_baseline_on_the_same_image():
    mask = np.zeros((41, 41), dtype=np.uint8)
    mask[18:23, 18:23] = PART_VALUES["head"]  # the head sits at the centre
    mask[5, 5] = PART_VALUES["tail"]
    grey = np.full((41, 41), 220.0)
    grey[2:9, 2:9] = 30.0  # the darkest blob is on the tail
    heat = np.zeros((41, 41))
    heat[20, 20] = 1.0
    case = score(heat, mask, grey, "head", radius=1.0, correct=True)
    assert case.hit and case.centre and not case.darkest
    assert case.area_share == pytest.approx(dilate(mask == PART_VALUES["head"], 1.0).mean())
    assert case.part_share == pytest.approx(25 / 41**2) and case.energy == 1.0
    tail = score(heat, mask, grey, "tail", radius=1.0, correct=False)
    assert not tail.hit and tail.darkest and not tail.centre


def test_the_summary_gives_each_group_and_cell_subset_with_a_bootstrap_interval():
    mask = np.zeros((21, 21), dtype=np.uint8)
    mask[10, 10] = PART_VALUES["head"]
    grey = np.full((21, 21), 100.0)
    on, off = np.zeros((21, 21)), np.zeros((21, 21))
    on[10, 10], off[0, 0] = 1.0, 1.0
    cases = [score(on if i % 4 else off, mask, grey, "head", 0.0, correct=i < 30) for i in range(40)]
    rows = {(r["group"], r["cells"]): r for r in summarise(cases, n_boot=500)}
    assert set(rows) == {("head", "all"), ("head", "correct"), ("head", "misclassified")}
    everything = rows[("head", "all")]
    assert everything["n"] == 40 and everything["hit_rate"] == pytest.approx(0.75)
    assert everything["ci_low"] < 0.75 < everything["ci_high"]
    assert everything["untrained"] is None and everything["part_switch"] is None


def test_the_bootstrap_interval_of_a_hit_rate_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    for draw in range(300):
        values = rng.random(120) < 0.3
        low, high = bootstrap_interval(values, n_boot=400, seed=draw)
        covered += low <= 0.3 <= high
    assert 0.90 <= covered / 300 <= 0.985  # 95 % nominal; percentile intervals run a little short at n = 120


def test_the_darkness_map_is_brightest_where_the_image_is_darkest():
    grey = np.full((20, 20), 200.0)
    grey[5:9, 5:9] = 10.0
    dark = darkness_map(grey)
    assert (
        dark.max() == 1.0
        and dark.min() == 0.0
        and np.unravel_index(dark.argmax(), dark.shape) in {(r, c) for r in range(5, 9) for c in range(5, 9)}
    )
