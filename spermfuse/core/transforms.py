"""Own image transforms: letterbox, flips, rotation, affine, photometric jitter, noise.

The paper (method A, Sec. 2.2) resizes every crop to 240x240 keeping the aspect
ratio, pads with the mean border colour RGB (204, 191, 183), and augments the
training images on the fly. Method B uses rotation, translation, zoom and both
flips. Geometry runs on PIL images (its C resampling is fast); photometric steps
run on the float tensor so the image is converted only once.

Every random step draws from a ``numpy.random.Generator`` handed in by the
caller, so the same seed gives the same augmented tensor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .segmentation import HybridOtsu

PAD_COLOR: tuple[int, int, int] = (204, 191, 183)
PAPER_IMG_SIZE = 240  # method A's input side (Sec. 2.4): the default wherever a size is needed


def as_rgb(image: Image.Image) -> Image.Image:
    """The image itself when already RGB (``convert`` would copy it on the data-loading hot path)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a ``width`` x ``height`` image inside its ``size`` letterbox:
    where :func:`letterbox` puts it, so that a map over the square can be cut back out."""
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def resize_longer_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side is ``size``, keeping the aspect ratio (bilinear, antialiased when shrinking)."""
    width, height = image.size
    _, _, new_w, new_h = letterbox_box(width, height, size)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)


def pad_to_square(image: Image.Image, size: int, fill: Sequence[int] = PAD_COLOR) -> Image.Image:
    """Centre an image of longer side ``size`` on a ``size`` x ``size`` canvas of ``fill``."""
    if image.size == (size, size):
        return image
    canvas = Image.new("RGB", (size, size), tuple(fill))
    canvas.paste(as_rgb(image), ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def letterbox(image: Image.Image, size: int, fill: Sequence[int] = PAD_COLOR) -> Image.Image:
    """Resize so the longer side is ``size`` keeping aspect ratio, then pad to a centred square."""
    return pad_to_square(resize_longer_side(image, size), size, fill)


def estimate_pad_color(images: Iterable[Image.Image], border: int = 1) -> tuple[int, int, int]:
    """Mean colour of the outermost ``border`` pixels over images (how the paper found 204,191,183)."""
    total = np.zeros(3, dtype=np.float64)
    count = 0
    for image in images:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        edge = np.ones(pixels.shape[:2], dtype=bool)
        edge[border:-border, border:-border] = False
        total += pixels[edge].sum(axis=0)
        count += int(edge.sum())
    if count == 0:
        raise ValueError("estimate_pad_color needs at least one image")
    return tuple(int(round(v)) for v in total / count)


def apply_affine(image: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill: Sequence[int]) -> Image.Image:
    """Resample ``image`` through the forward 3x3 ``matrix`` (input -> output pixel coordinates)."""
    inverse = np.linalg.inv(matrix)  # PIL wants the map output -> input
    coefficients = tuple(float(v) for v in inverse[:2].ravel())
    return image.transform(size, Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=tuple(fill))


def centring_matrix(width: int, height: int, size: int) -> np.ndarray:
    """The shift of :func:`pad_to_square` (whole pixels) as a 3x3 map."""
    return np.array([[1, 0, (size - width) // 2], [0, 1, (size - height) // 2], [0, 0, 1]], dtype=np.float64)


@dataclass
class RandomFlip:
    """Flip horizontally (p_horizontal) and vertically (p_vertical), each independently."""

    p_horizontal: float = 0.5
    p_vertical: float = 0.3

    def matrix(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """The flip as a map of a ``width`` x ``height`` image onto itself."""
        sx = -1.0 if rng.random() < self.p_horizontal else 1.0
        sy = -1.0 if rng.random() < self.p_vertical else 1.0
        return np.array(
            [[sx, 0, width if sx < 0 else 0], [0, sy, height if sy < 0 else 0], [0, 0, 1]], dtype=np.float64
        )

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        matrix = self.matrix(image.width, image.height, rng)
        if matrix[0, 0] < 0:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if matrix[1, 1] < 0:
            image = image.transpose(Image.FLIP_TOP_BOTTOM)
        return image


@dataclass
class RandomAffine:
    """Rotate by U(-degrees, degrees), translate by up to ``translate`` of the size, zoom by 1 +- ``zoom``
    (``independent_zoom``: x and y drawn apart, as Keras's ImageDataGenerator ``zoom_range`` does)."""

    degrees: float = 15.0
    translate: float = 0.0
    zoom: float = 0.0
    fill: tuple[int, int, int] = PAD_COLOR
    independent_zoom: bool = False

    def matrix(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """Rotation and zoom about the centre, then the shift, as a map of a ``width`` x ``height`` image onto itself."""
        angle = math.radians(rng.uniform(-self.degrees, self.degrees)) if self.degrees else 0.0
        shift_x = rng.uniform(-self.translate, self.translate) * width if self.translate else 0.0
        shift_y = rng.uniform(-self.translate, self.translate) * height if self.translate else 0.0
        scale_x = rng.uniform(1 - self.zoom, 1 + self.zoom) if self.zoom else 1.0
        scale_y = rng.uniform(1 - self.zoom, 1 + self.zoom) if self.zoom and self.independent_zoom else scale_x
        cos, sin = math.cos(angle), math.sin(angle)
        linear = np.array([[cos * scale_x, -sin * scale_y], [sin * scale_x, cos * scale_y]])
        cx, cy = width / 2, height / 2
        offset = np.array([cx + shift_x, cy + shift_y]) - linear @ np.array([cx, cy])
        return np.array([[*linear[0], offset[0]], [*linear[1], offset[1]], [0, 0, 1]], dtype=np.float64)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        matrix = self.matrix(image.width, image.height, rng)
        if np.allclose(matrix, np.eye(3)):
            return image
        return apply_affine(image, matrix, image.size, self.fill)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float32 tensor [3, H, W] in [0, 1]."""
    array = np.array(as_rgb(image), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


@dataclass
class RandomBrightnessContrast:
    """With probability p, x -> (x - mean) * contrast + mean + brightness, factors from +-limit.

    Photometric steps work in place on the tensor that ``to_tensor`` made for them.
    """

    p: float = 0.3
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2

    def __call__(self, tensor: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.p:
            return tensor
        brightness = rng.uniform(-self.brightness_limit, self.brightness_limit)
        contrast = 1.0 + rng.uniform(-self.contrast_limit, self.contrast_limit)
        mean = tensor.mean().item()
        # (x - m) * c + m + b as one multiply-add: x * c + (m (1 - c) + b).
        return tensor.mul_(contrast).add_(mean * (1.0 - contrast) + brightness).clamp_(0.0, 1.0)


@dataclass
class RandomGaussianNoise:
    """With probability p, add N(0, sigma^2) noise, sigma drawn from U(0, max_sigma) (in [0,1] units)."""

    p: float = 0.2
    max_sigma: float = 0.04

    def __call__(self, tensor: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.p:
            return tensor
        sigma = rng.uniform(0.0, self.max_sigma)
        noise = torch.from_numpy(rng.standard_normal(tuple(tensor.shape), dtype=np.float32))
        return tensor.add_(noise, alpha=sigma).clamp_(0.0, 1.0)


@dataclass
class Normalize:
    """Subtract the channel mean and divide by the channel std (ImageNet by default)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.sub_(self._mean).div_(self._std)


class Pipeline:
    """PIL image -> normalised tensor: resize, preprocess, pad, geometric and photometric steps.

    The order is the papers': the image is resized (antialiased) so its longer side is
    ``img_size``; ``preprocess`` steps (the hybrid Otsu of method B) then work at that scale;
    the image is padded to a square and the random ``geometric`` steps (each gives a 3x3 map,
    ``step.matrix(width, height, rng)``) are applied in one resample; ``photometric`` steps
    take (tensor, rng). Padding and the corners a rotation exposes are filled with
    ``pad_color``, or with the ``background`` of the last preprocess step when it has one (a
    segmented image is padded with its own background, not with the microscope's beige).
    With identity augmentation the train path gives exactly the eval image.
    """

    def __init__(
        self,
        img_size: int,
        pad_color: tuple[int, int, int] = PAD_COLOR,
        preprocess: Sequence[Callable[[Image.Image], Image.Image]] = (),
        geometric: Sequence[Callable] = (),
        photometric: Sequence[Callable] = (),
        normalize: Normalize | None = None,
    ) -> None:
        self.img_size = img_size
        self.pad_color = pad_color
        self.preprocess = list(preprocess)
        self.geometric = list(geometric)
        self.photometric = list(photometric)
        self.normalize = normalize or Normalize()
        self.fill = (
            tuple(getattr(self.preprocess[-1], "background", pad_color)) if self.preprocess else tuple(pad_color)
        )

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if rng is None:
            rng = np.random.default_rng()
        tensor = to_tensor(self.geometry(image, rng))
        for step in self.photometric:
            tensor = step(tensor, rng)
        return self.normalize(tensor)

    def scaled(self, image: Image.Image) -> torch.Tensor:
        """The eval image as a [0, 1] tensor, before normalisation (what the fused model takes)."""
        return to_tensor(self.geometry(image, np.random.default_rng(0)))

    def geometry(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Resize, preprocess, then pad and the random geometric steps in a single resample.

        The antialiased resize comes first on both paths, so training and evaluation see the
        same pixels whatever the input size; the augmentation adds one bilinear resample
        (none when it draws the identity: whole-pixel shifts and flips resample exactly).
        """
        image = resize_longer_side(image, self.img_size)
        for step in self.preprocess:
            image = step(image)
        if not self.geometric:
            return pad_to_square(image, self.img_size, self.fill)
        matrix = centring_matrix(image.width, image.height, self.img_size)
        for step in self.geometric:
            matrix = step.matrix(self.img_size, self.img_size, rng) @ matrix
        return apply_affine(as_rgb(image), matrix, (self.img_size, self.img_size), self.fill)

    def __repr__(self) -> str:
        steps = [
            f"resize_longer_side({self.img_size})",
            *self.preprocess,
            f"pad_to_square({self.img_size}, fill={self.fill})",
            *self.geometric,
            *self.photometric,
            self.normalize,
        ]
        return "Pipeline(\n  " + ",\n  ".join(map(str, steps)) + "\n)"


def build(
    train: bool,
    img_size: int = PAPER_IMG_SIZE,
    *,
    preset: str = "paper_a",
    pad_color: tuple[int, int, int] = PAD_COLOR,
    rotation: float = 15.0,
    preprocess: Sequence[Callable[[Image.Image], Image.Image]] = (),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Pipeline:
    """The train or eval pipeline of a method.

    ``paper_a`` (method A): h-flip 0.5, v-flip 0.3, rotation +-15 deg, brightness/contrast 0.3,
    Gaussian noise 0.2. ``paper_b`` (method B): rotation 15 deg, translation 10 %, zoom 10 % (x and y apart, as Keras),
    both flips at 0.5. ``none``: no augmentation. Eval is letterbox + normalise only.
    """
    normalize = Normalize(mean, std)
    if not train or preset == "none":
        return Pipeline(img_size, pad_color, preprocess, normalize=normalize)
    if preset == "paper_a":
        geometric = [RandomFlip(0.5, 0.3), RandomAffine(degrees=rotation, fill=pad_color)]
        photometric = [RandomBrightnessContrast(p=0.3), RandomGaussianNoise(p=0.2)]
    elif preset == "paper_b":
        geometric = [
            RandomFlip(0.5, 0.5),
            RandomAffine(degrees=rotation, translate=0.1, zoom=0.1, fill=pad_color, independent_zoom=True),
        ]
        photometric = []
    else:
        raise ConfigError(f"--augment {preset}: unknown; choose paper_a, paper_b or none")
    return Pipeline(img_size, pad_color, preprocess, geometric, photometric, normalize)


PIPELINE_SPEC_VERSION = 1  # bump when from_spec builds different pixels from the same spec


@dataclass(frozen=True)
class PipelineSpec:
    """A model's test-time preprocessing as data: what ``best.pt`` records, what prediction,
    export and explanation rebuild, and what tells two members' inputs apart (dataclass
    equality; a dict key).

    The eval pipeline of a spec is fixed by :func:`from_spec`: resize the longer side to
    ``img_size``, the hybrid Otsu of method B when ``preprocess`` is ``"otsu"``, pad to a
    square with ``pad_color`` (black after Otsu), scale to [0, 1], normalise by ``mean``/``std``.
    """

    img_size: int
    pad_color: tuple[int, int, int] = PAD_COLOR
    preprocess: str = "none"  # none | otsu
    otsu_foreground: str = "dark"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def preprocess_steps(self) -> list[HybridOtsu]:
        """The steps run on each resized image before it is padded: method B's Otsu step, or none."""
        return [HybridOtsu(foreground=self.otsu_foreground)] if self.preprocess == "otsu" else []

    def to_dict(self) -> dict:
        """JSON- and ``weights_only``-safe: lists, numbers and strings, with the version."""
        values = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
        return {"version": PIPELINE_SPEC_VERSION, **values}

    @classmethod
    def from_dict(cls, data: dict, source: str = "best.pt") -> "PipelineSpec":
        """The spec a checkpoint recorded; one of another version or shape is refused."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source}: records no preprocessing (written before spermfuse v0.3); retrain it, or predict with the version that trained it"
            )
        if data.get("version") != PIPELINE_SPEC_VERSION:
            found = data.get("version")
            raise ConfigError(
                f"{source}: its preprocessing record is version {found}, this spermfuse builds version {PIPELINE_SPEC_VERSION}; "
                "predict with the version that trained it (git_commit in config.json), or retrain"
            )
        names = {f.name for f in fields(cls)}
        values = {
            key: tuple(value) if isinstance(value, list) else value for key, value in data.items() if key != "version"
        }
        if set(values) != names:
            raise ConfigError(
                f"{source}: its preprocessing record has keys {sorted(values)}, expected {sorted(names)}; retrain"
            )
        return cls(**values)


def from_spec(spec: PipelineSpec, train: bool = False, *, preset: str = "paper_a", rotation: float = 15.0) -> Pipeline:
    """The eval pipeline of ``spec`` (``train=False``), or its train pipeline with ``preset`` augmentation."""
    return build(
        train,
        spec.img_size,
        preset=preset,
        pad_color=spec.pad_color,
        rotation=rotation,
        preprocess=spec.preprocess_steps(),
        mean=spec.mean,
        std=spec.std,
    )
