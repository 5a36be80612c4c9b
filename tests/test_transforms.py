import numpy as np
import pytest
import torch
from PIL import Image

from spermfuse.core import transforms
from spermfuse.core.transforms import PAD_COLOR, RandomAffine, RandomFlip, build, estimate_pad_color, letterbox


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8))


@pytest.mark.parametrize("size", [(200, 100), (90, 180), (64, 64), (17, 240)])
def test_letterbox_output_is_square_and_keeps_aspect(size):
    out = letterbox(gradient_image(*size), 120)
    assert out.size == (120, 120)
    pixels = np.asarray(out)
    content = np.any(np.abs(pixels.astype(int) - PAD_COLOR).sum(axis=2) > 0, axis=None)
    assert content
    # The content box has the input's aspect ratio (to one pixel of rounding).
    not_pad = np.abs(pixels.astype(int) - np.array(PAD_COLOR)).sum(axis=2) > 0
    rows, cols = np.flatnonzero(not_pad.any(1)), np.flatnonzero(not_pad.any(0))
    box_w, box_h = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    assert max(box_w, box_h) == 120
    assert abs(box_w / box_h - size[0] / size[1]) < 2 / min(box_w, box_h) + 0.02


def test_letterbox_pad_colour_is_exact():
    out = np.asarray(letterbox(Image.new("RGB", (100, 40), (0, 0, 0)), 100))
    assert tuple(out[0, 0]) == PAD_COLOR and tuple(out[-1, -1]) == PAD_COLOR
    assert tuple(out[50, 50]) == (0, 0, 0)


def test_flips_are_their_own_inverse():
    image = gradient_image(31, 23)
    always = RandomFlip(p_horizontal=1.0, p_vertical=1.0)
    rng = np.random.default_rng(0)
    assert np.array_equal(np.asarray(always(always(image, rng), rng)), np.asarray(image))
    flipped = np.asarray(RandomFlip(1.0, 0.0)(image, rng))
    assert np.array_equal(flipped, np.asarray(image)[:, ::-1])


def test_rotation_fills_corners_with_pad_colour():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    rotate = RandomAffine(degrees=45.0)
    rng = np.random.default_rng(3)
    for _ in range(50):  # draw until the angle is large enough to expose the corners (|angle| > 1 deg: almost always)
        out = np.asarray(rotate(image, rng))
        if tuple(out[0, 0]) == PAD_COLOR:
            break
    assert tuple(out[0, 0]) == PAD_COLOR and tuple(out[50, 50]) == (0, 0, 0)


def test_rotation_of_a_non_square_image_turns_about_its_centre():
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[13:17, 28:32] = 255  # a bright square at the centre of a 60 x 30 image
    out = np.asarray(RandomAffine(degrees=15.0, fill=(0, 0, 0))(Image.fromarray(pixels), np.random.default_rng(0)))
    weights = out[..., 0].astype(np.float64)
    rows, cols = np.indices(weights.shape)
    centroid = ((rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum())
    assert centroid == pytest.approx((14.5, 29.5), abs=0.5)


def test_zero_affine_is_identity():
    image = gradient_image(40, 30)
    assert RandomAffine(degrees=0.0)(image, np.random.default_rng(0)) is image


def test_same_seed_gives_same_augmented_tensor_and_other_seeds_differ():
    pipeline = build(train=True, img_size=64)
    image = gradient_image(80, 50)
    a = pipeline(image, np.random.default_rng(7))
    b = pipeline(image, np.random.default_rng(7))
    others = [pipeline(image, np.random.default_rng(s)) for s in range(8, 16)]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, o) for o in others)


def test_eval_pipeline_is_letterbox_and_normalise_only():
    image = gradient_image(80, 50)
    out = build(train=False, img_size=64)(image)
    expected = transforms.Normalize()(transforms.to_tensor(letterbox(image, 64)))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.allclose(out, expected)


def test_normalise_uses_imagenet_statistics():
    pad = transforms.to_tensor(Image.new("RGB", (2, 2), PAD_COLOR))
    out = transforms.Normalize()(pad)
    expected = (PAD_COLOR[0] / 255 - 0.485) / 0.229
    assert out[0, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_estimate_pad_colour_is_the_mean_border_colour():
    images = [Image.new("RGB", (10, 10), (200, 190, 180)), Image.new("RGB", (10, 10), (210, 192, 186))]
    assert estimate_pad_color(images) == (205, 191, 183)


def test_unknown_preset_is_refused_naming_the_flag():
    from spermfuse.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--augment imagenet: unknown"):
        build(train=True, preset="imagenet")


def test_a_pipeline_spec_round_trips_and_rebuilds_the_same_pipeline():
    from spermfuse.core.transforms import PipelineSpec, from_spec

    spec = PipelineSpec(48, pad_color=(0, 0, 0), preprocess="otsu", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    again = PipelineSpec.from_dict(spec.to_dict())
    assert again == spec and hash(again) == hash(spec) and again != PipelineSpec(48)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    assert torch.equal(from_spec(again)(image), from_spec(spec)(image))


@pytest.mark.parametrize(
    "size", [(200, 100), (90, 180), (150, 120), (300, 200), (250, 470), (480, 300), (700, 500), (96, 96)]
)
def test_train_path_with_identity_augmentation_gives_exactly_the_eval_image(size):
    from spermfuse.core.transforms import Pipeline

    # Fine detail (noise) is where an antialiased and a plain bilinear resample differ.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    still = Pipeline(96, geometric=[RandomFlip(0.0, 0.0), RandomAffine(degrees=0.0)])
    composed = np.asarray(still.geometry(image, np.random.default_rng(0)))
    evaluated = np.asarray(build(False, 96).geometry(image, np.random.default_rng(0)))
    assert np.array_equal(composed, evaluated) and np.array_equal(evaluated, np.asarray(letterbox(image, 96)))


def test_composed_flip_matches_flipping_the_letterboxed_image():
    from spermfuse.core.transforms import Pipeline

    image = gradient_image(120, 80)
    flipped = Pipeline(96, geometric=[RandomFlip(1.0, 0.0)]).geometry(image, np.random.default_rng(0))
    expected = np.asarray(letterbox(image, 96))[:, ::-1]
    assert np.abs(np.asarray(flipped, dtype=np.float64) - expected).mean() < 1.5


def test_keras_zoom_scales_x_and_y_apart_and_the_isotropic_zoom_does_not():
    from spermfuse.core.transforms import RandomAffine

    def column_norms(affine):
        matrix = affine.matrix(100, 80, np.random.default_rng(5))
        return np.linalg.norm(matrix[:2, :2], axis=0)

    isotropic = column_norms(RandomAffine(degrees=10, zoom=0.1))
    independent = column_norms(RandomAffine(degrees=10, zoom=0.1, independent_zoom=True))
    assert isotropic[0] == pytest.approx(isotropic[1])
    assert abs(independent[0] - independent[1]) > 1e-3
    assert all(0.9 <= n <= 1.1 for n in independent)
