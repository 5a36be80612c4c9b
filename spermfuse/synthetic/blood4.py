"""blood4: blood-smear-like images in the four ALL classes of method B."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .drawing import SUPERSAMPLE, finish, jitter_colour, stained_background

BLOOD4_CLASSES = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]


BLOOD_CELL = {
    # nucleus radius (fraction of image), cytoplasm rim (x nucleus), chromatin texture, irregularity
    "Benign": (0.12, (1.25, 1.45), 0.10, 0.03),
    "Early Pre-B": (0.17, (1.12, 1.3), 0.35, 0.06),
    "Pre-B": (0.19, (1.1, 1.25), 0.22, 0.08),
    "Pro-B": (0.22, (1.05, 1.18), 0.45, 0.14),
}


def render_blood(label: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """A blood-smear-like field: pink erythrocytes around one purple lymphoid cell."""
    size = 160
    W = size * SUPERSAMPLE
    canvas = Image.fromarray(np.clip(stained_background(W, W, rng, base=(232, 214, 218)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(6, 14))):
        x, y, r = rng.uniform(0, W), rng.uniform(0, W), rng.uniform(0.07, 0.1) * W
        draw.ellipse([x - r, y - r, x + r, y + r], fill=jitter_colour((215, 150, 160), rng, 8))
        draw.ellipse([x - r * 0.4, y - r * 0.4, x + r * 0.4, y + r * 0.4], fill=jitter_colour((225, 175, 180), rng, 6))
    nucleus_fraction, rim_range, texture, irregular = BLOOD_CELL[label]
    nucleus_r = nucleus_fraction * rng.uniform(0.85, 1.15) * W
    rim = rng.uniform(*rim_range)
    centre = np.array([W / 2, W / 2]) + rng.normal(0, 0.04 * W, 2)
    phi = np.linspace(0, 2 * np.pi, 60, endpoint=False)

    def blob(radius: float, amount: float) -> list[tuple[float, float]]:
        wobble = 1 + sum(amount * rng.normal(0, 1) / h * np.cos(h * phi + rng.uniform(0, 6.3)) for h in (2, 3, 5))
        return [tuple(pt) for pt in centre + np.stack([np.cos(phi), np.sin(phi)], 1) * (radius * wobble)[:, None]]

    draw.polygon(blob(nucleus_r * rim, 0.03), fill=jitter_colour((170, 160, 210), rng, 8))
    draw.polygon(blob(nucleus_r, irregular), fill=jitter_colour((95, 45, 130), rng, 8))
    pixels = np.asarray(canvas, dtype=np.float32)
    yy, xx = np.mgrid[0:W, 0:W]
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < (0.9 * nucleus_r) ** 2
    grain = np.asarray(
        Image.fromarray((rng.random((W // 4, W // 4)) * 255).astype(np.uint8)).resize((W, W), Image.BILINEAR),
        dtype=np.float32,
    )
    pixels[inside] += (grain[inside, None] - 128) * texture * 0.6
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    blur, noise = rng.uniform(0.4, 1.0), rng.uniform(2, 5)
    meta = {
        "nucleus_radius_px": round(nucleus_r / SUPERSAMPLE, 2),
        "cytoplasm_ratio": round(rim, 3),
        "texture": texture,
    }
    return finish(canvas, (size, size), rng, blur, noise), meta
