"""Drawing helpers shared by the renderers: rotation, stained backgrounds, optics, debris."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 2


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """2-D points (rows of x, y) turned by ``angle`` radians about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def stained_background(width: int, height: int, rng: np.random.Generator, base=(204, 191, 183)) -> np.ndarray:
    """Beige-grey bright-field background with uneven illumination, float32 HxWx3."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.normal(0, 0.12, 2)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    gradient = gx * (xx / width - 0.5) + gy * (yy / height - 0.5)
    vignette = -0.08 * (((xx - cx) / width) ** 2 + ((yy - cy) / height) ** 2)
    colour = np.array(base, dtype=np.float32) + rng.normal(0, 3, 3)
    return colour * (1.0 + gradient + vignette)[..., None]


def finish(
    canvas: Image.Image, size: tuple[int, int], rng: np.random.Generator, blur: float, noise: float
) -> Image.Image:
    """Downsample the supersampled drawing, blur like optics, add sensor noise."""
    image = canvas.resize(size, Image.BOX)
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def jitter_colour(colour, rng: np.random.Generator, amount: float = 12.0) -> tuple[int, int, int]:
    """An RGB colour moved at random by about ``amount`` per channel (a stain's batch-to-batch spread)."""
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def draw_debris(draw: ImageDraw.ImageDraw, width: int, height: int, rng: np.random.Generator, count: int) -> None:
    """``count`` small blobs scattered at random: the dirt every real slide has beside its cells."""
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(1.0, 3.5) * SUPERSAMPLE
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r], fill=jitter_colour((150, 120, 150), rng, 20))
