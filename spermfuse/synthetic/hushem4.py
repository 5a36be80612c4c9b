"""hushem4: 131 x 131 sperm-head images in the four HuSHeM classes."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .drawing import SUPERSAMPLE, finish, jitter_colour, rotate, stained_background
from .sperm18 import head_outline, sperm_params

HUSHEM4_CLASSES = ["Amorphous", "Normal", "Pyriform", "Tapered"]


HUSHEM_TO_SPERM = {"Amorphous": "AmorfHead", "Normal": "Normal", "Pyriform": "PyriformHead", "Tapered": "TaperedHead"}


def render_head(label: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """A 131x131 sperm-head image (HuSHeM-like): one large head, neck start, centred."""
    size = 131
    W = size * SUPERSAMPLE
    p = sperm_params(HUSHEM_TO_SPERM[label], rng, head_length_px=rng.uniform(60, 80))
    S = p.head_length_px * SUPERSAMPLE
    canvas = Image.fromarray(np.clip(stained_background(W, W, rng, base=(190, 180, 200)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    angle = rng.uniform(-0.3, 0.3) + (math.pi if rng.random() < 0.5 else 0.0)
    centre = np.array([W / 2, W / 2]) + rng.normal(0, 4, 2)
    outline = head_outline(p, rng)
    draw.polygon([tuple(pt) for pt in rotate(outline * S, angle) + centre], fill=jitter_colour((90, 50, 120), rng))
    cap = outline.copy()
    cap[:, 0] = np.minimum(cap[:, 0], -0.5 + p.acrosome_fraction)
    draw.polygon([tuple(pt) for pt in rotate(cap * S, angle) + centre], fill=jitter_colour((160, 130, 185), rng))
    neck = rotate(np.array([[0.45, 0.0], [0.8, 0.0]]) * S, angle) + centre
    draw.line([tuple(pt) for pt in neck], fill=jitter_colour((130, 80, 140), rng), width=int(0.15 * S))
    blur, noise = rng.uniform(0.5, 1.5), rng.uniform(2, 5)
    meta = {
        "head_aspect": round(p.head_aspect, 4),
        "head_taper": round(p.head_taper, 4),
        "head_irregularity": round(p.head_irregularity, 4),
        "blur": round(blur, 3),
    }
    return finish(canvas, (size, size), rng, blur, noise), meta
