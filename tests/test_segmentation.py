import numpy as np
import pytest
from PIL import Image

from spermfuse.core.segmentation import HybridOtsu, binary_closing, elliptical_kernel, hybrid_otsu, otsu_threshold


def test_otsu_separates_a_bimodal_histogram():
    rng = np.random.default_rng(0)
    dark = rng.normal(60, 8, 5000)
    bright = rng.normal(190, 8, 5000)
    gray = np.clip(np.concatenate([dark, bright]), 0, 255).astype(np.uint8)
    t = otsu_threshold(gray)
    assert 60 < t < 190
    assert (gray[:5000] <= t).mean() > 0.999 and (gray[5000:] > t).mean() > 0.999


def test_otsu_two_levels_split_at_the_first_of_the_tied_thresholds():
    gray = np.array([10] * 30 + [200] * 70, dtype=np.uint8)
    # Every t in 10..199 separates the two levels equally well; the first one wins, as in OpenCV.
    assert otsu_threshold(gray) == 10


def test_otsu_maximises_the_between_class_variance_computed_directly():
    gray = np.random.default_rng(4).gamma(3.0, 30.0, 4000).clip(0, 255).astype(np.uint8)

    def between_class_variance(t):
        low, high = gray[gray <= t].astype(np.float64), gray[gray > t].astype(np.float64)
        if len(low) == 0 or len(high) == 0:
            return -1.0
        return len(low) * len(high) / len(gray) ** 2 * (low.mean() - high.mean()) ** 2

    scores = [between_class_variance(t) for t in range(256)]
    assert otsu_threshold(gray) == int(np.argmax(scores))


def test_otsu_of_a_constant_image_keeps_everything_in_one_class():
    gray = np.full((8, 8), 77, dtype=np.uint8)
    assert not (gray > otsu_threshold(gray)).any()


def test_otsu_refuses_non_uint8():
    with pytest.raises(TypeError):
        otsu_threshold(np.zeros((4, 4), dtype=np.float32))


def test_elliptical_kernel_is_opencv_5x5_ellipse():
    expected = np.array(
        [[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=bool
    )
    assert np.array_equal(elliptical_kernel(5), expected)


def test_closing_fills_a_one_pixel_hole():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    mask[10, 10] = False
    closed = binary_closing(mask, elliptical_kernel(5))
    assert closed[10, 10]
    assert np.array_equal(closed[5:15, 5:15], np.ones((10, 10), dtype=bool))


def test_closing_keeps_objects_touching_the_border():
    mask = np.zeros((20, 20), dtype=bool)
    mask[:, :4] = True  # a band along the left edge
    closed = binary_closing(mask, elliptical_kernel(5))
    assert np.array_equal(closed, mask)


def test_hybrid_otsu_keeps_the_dark_cell_and_blanks_the_background():
    image = Image.new("RGB", (60, 60), (220, 210, 205))
    pixels = np.array(image)
    pixels[20:40, 20:40] = (90, 40, 120)
    out = np.asarray(hybrid_otsu(Image.fromarray(pixels)))
    assert out.shape == (60, 60, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[30, 30, 0] > 0 and out[2, 2, 0] == 0
    mask = np.asarray(hybrid_otsu(Image.fromarray(pixels), mode="mask"))
    assert set(np.unique(mask)) == {0, 255} and mask[30, 30, 0] == 255


def test_hybrid_otsu_bright_foreground_is_the_papers_literal_rule():
    pixels = np.full((30, 30, 3), 220, dtype=np.uint8)
    pixels[10:20, 10:20] = 40
    mask = np.asarray(hybrid_otsu(Image.fromarray(pixels), mode="mask", foreground="bright"))
    assert mask[15, 15, 0] == 0 and mask[0, 0, 0] == 255


def test_method_b_segments_after_the_resize_and_pads_with_its_own_background():
    from conftest import draw_cell

    from spermfuse.core.transforms import build, pad_to_square, resize_longer_side

    image = draw_cell((400, 200), radius=60, seed=3)
    segmented = np.asarray(build(False, 64, preprocess=[HybridOtsu()]).geometry(image, np.random.default_rng(0)))
    # The paper's order: resize to the input size, grey, Otsu, closing; then pad with black.
    expected = np.asarray(pad_to_square(hybrid_otsu(resize_longer_side(image, 64)), 64, (0, 0, 0)))
    assert np.array_equal(segmented, expected)
    assert tuple(segmented[0, 0]) == (0, 0, 0) and segmented[32, 32].max() > 0  # black pad, the cell kept
    for seed in range(5):  # rotation / shift fills with the background too, never the beige pad colour
        augmented = np.asarray(
            build(True, 64, preset="paper_b", rotation=45, preprocess=[HybridOtsu()]).geometry(
                image, np.random.default_rng(seed)
            )
        )
        assert all(tuple(augmented[y, x]) == (0, 0, 0) for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)))
