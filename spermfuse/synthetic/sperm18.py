"""sperm18: single-sperm crops in the 18 Hi-LabSpermMorpho classes, with their part masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..data.taxonomy import PART_VALUES
from .drawing import SUPERSAMPLE, draw_debris, finish, jitter_colour, rotate, stained_background

# Relative class frequencies shaped like Hi-LabSpermMorpho's: VacuolatedHead the most
# common (1697 of 18,456), DoubleHead (48), LongTail and ThinNeck the rarest. Only those
# counts are published in the text; the rest keep that ordering, not exact values.
SPERM18_FREQUENCY = {
    "AmorfHead": 1400,
    "AsymmetricNeck": 900,
    "CurlyTail": 1100,
    "DoubleHead": 48,
    "DoubleTail": 500,
    "LongTail": 110,
    "NarrowAcrosome": 900,
    "Normal": 1600,
    "PinHead": 600,
    "PyriformHead": 1000,
    "RounHead": 700,
    "ShortTail": 900,
    "TaperedHead": 1200,
    "ThickNeck": 700,
    "ThinNeck": 150,
    "TwistedNeck": 700,
    "TwistedTail": 800,
    "VacuolatedHead": 1697,
}


@dataclass
class SpermParams:
    """What makes one sperm; lengths in units of the head length (except scale, in px)."""

    head_length_px: float
    head_aspect: float = 0.62  # width / length
    head_taper: float = 0.0  # >0: broad front, narrow back (pyriform)
    head_irregularity: float = 0.02  # harmonic amplitude of the outline (amorphous)
    acrosome_fraction: float = 0.55  # part of the head length covered by the cap
    vacuoles: int = 0
    double_head: bool = False
    neck_thickness: float = 0.15
    neck_length: float = 0.9
    neck_bend_deg: float = 0.0
    neck_offset: float = 0.0  # insertion offset, fraction of head half-width
    neck_angle_deg: float = 0.0
    tail_length: float = 6.0
    tail_curl: float = 0.0  # turns of coiling along the tail
    tail_fold_deg: float = 0.0
    double_tail: bool = False


def sperm_params(label: str, rng: np.random.Generator, head_length_px: float) -> SpermParams:
    """Draw the parameters of one sperm of class ``label``; ranges overlap between neighbours."""
    u = rng.uniform
    p = SpermParams(
        head_length_px=head_length_px,
        head_aspect=u(0.55, 0.72),
        head_irregularity=u(0.0, 0.05),
        acrosome_fraction=u(0.4, 0.7),
        neck_thickness=u(0.11, 0.2),
        neck_length=u(0.8, 1.1),
        neck_bend_deg=u(-12, 12),
        neck_offset=u(-0.12, 0.12),
        neck_angle_deg=u(-8, 8),
        tail_length=u(5.0, 6.5),
    )
    if label == "AmorfHead":
        p.head_irregularity = u(0.08, 0.22)
        p.head_aspect = u(0.5, 0.8)
        p.head_taper = u(-0.2, 0.3)
    elif label == "TaperedHead":
        p.head_aspect = u(0.36, 0.52)
    elif label == "PyriformHead":
        p.head_taper = u(0.3, 0.65)
        p.head_aspect = u(0.5, 0.68)
    elif label == "RounHead":
        p.head_aspect = u(0.85, 1.0)
        p.head_length_px *= u(0.8, 0.95)
        p.acrosome_fraction = 0.0
    elif label == "PinHead":
        p.head_length_px *= u(0.3, 0.45)
        p.acrosome_fraction = 0.0
    elif label == "DoubleHead":
        p.double_head = True
    elif label == "VacuolatedHead":
        p.vacuoles = int(rng.integers(2, 6))
    elif label == "NarrowAcrosome":
        p.acrosome_fraction = u(0.12, 0.32)
    elif label == "ThinNeck":
        p.neck_thickness = u(0.06, 0.12)
    elif label == "ThickNeck":
        p.neck_thickness = u(0.24, 0.38)
    elif label == "TwistedNeck":
        p.neck_bend_deg = float(rng.choice([-1, 1]) * u(30, 75))
    elif label == "AsymmetricNeck":
        side = float(rng.choice([-1, 1]))
        p.neck_offset = side * u(0.1, 0.5)
        p.neck_angle_deg = side * u(5, 30)
    elif label == "DoubleTail":
        p.double_tail = True
    elif label == "CurlyTail":
        p.tail_curl = u(1.2, 2.5)
    elif label == "LongTail":
        p.tail_length = u(7.5, 9.5)
    elif label == "ShortTail":
        p.tail_length = u(1.2, 2.6)
    elif label == "TwistedTail":
        p.tail_fold_deg = float(rng.choice([-1, 1]) * u(110, 170))
    return p


def head_outline(p: SpermParams, rng: np.random.Generator, n: int = 72) -> np.ndarray:
    """Head outline in head units, centred, anterior end at x = -0.5, posterior at x = +0.5."""
    phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 0.5 * np.cos(phi)
    half_width = 0.5 * p.head_aspect * (1.0 - p.head_taper * (2 * x))  # broad front when taper > 0
    y = half_width * np.sin(phi)
    if p.head_irregularity > 0:
        radius = np.ones_like(phi)
        for harmonic in (2, 3, 4, 5):
            radius += (
                p.head_irregularity * rng.normal(0, 1) / harmonic * np.cos(harmonic * phi + rng.uniform(0, 2 * np.pi))
            )
        x, y = x * radius, y * radius
    return np.stack([x, y], axis=1)


def tail_path(
    start: np.ndarray, heading: float, length_px: float, p: SpermParams, rng: np.random.Generator
) -> np.ndarray:
    """A thin wavy tail: integrate the heading along the arc length."""
    steps = max(int(length_px / 2), 4)
    s = np.linspace(0, 1, steps)
    wave = rng.uniform(0.15, 0.4) * np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * s + rng.uniform(0, 2 * np.pi))
    angles = heading + wave * (1 - 0.5 * s)
    if p.tail_curl:
        angles = angles + 2 * np.pi * p.tail_curl * s**1.3 * float(rng.choice([-1, 1]))
    if p.tail_fold_deg:
        fold_at = rng.uniform(0.3, 0.65)
        angles = angles + math.radians(p.tail_fold_deg) / (1 + np.exp(-(s - fold_at) * 60))
    step = length_px / steps
    offsets = np.cumsum(np.stack([np.cos(angles), np.sin(angles)], 1) * step, axis=0)
    return np.vstack([start, start + offsets])


def render_sperm(
    label: str, rng: np.random.Generator, mask: bool = False
) -> tuple[Image.Image, dict] | tuple[Image.Image, dict, Image.Image]:
    """One single-sperm crop of class ``label`` and its generating parameters.

    ``mask=True`` also returns its part mask (``PART_VALUES``: background 0, head 1, neck 2,
    tail 3; same size as the image), drawn with the very polygons and lines of the image. It
    draws nothing from ``rng``, so the image is the same with or without it.
    """
    width, height = int(rng.integers(80, 201)), 0
    height = int(np.clip(width * rng.uniform(0.7, 1.4), 80, 200))
    head_px = min(width, height) * rng.uniform(0.2, 0.26)
    p = sperm_params(label, rng, head_px)
    W, H, S = width * SUPERSAMPLE, height * SUPERSAMPLE, p.head_length_px * SUPERSAMPLE

    canvas = Image.fromarray(np.clip(stained_background(W, H, rng), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    # The part mask is drawn only when asked: it costs up to a fifth of the image's time.
    parts = Image.new("L", (W, H), PART_VALUES["background"]) if mask else None
    draw_parts = ImageDraw.Draw(parts) if mask else None
    if rng.random() < 0.3:
        draw_debris(draw, W, H, rng, int(rng.integers(1, 4)))

    stain = rng.normal(0, 10, 3)
    head_colour = jitter_colour(np.array((105, 55, 130)) + stain, rng, 6)
    acrosome_colour = jitter_colour(np.array((175, 145, 195)) + stain, rng, 6)
    neck_colour = jitter_colour(np.array((140, 85, 145)) + stain, rng, 6)
    tail_colour = jitter_colour(np.array((160, 125, 165)) + stain, rng, 6)

    # Local frame: head at the origin, tail toward +x; place it so the sperm fits the crop.
    angle = rng.uniform(0, 2 * np.pi)
    centre = np.array([W / 2, H / 2]) + rng.normal(0, 0.05, 2) * [W, H]
    shift_back = (p.tail_length * 0.35) * S  # the tail is long: move the head toward the crop's side
    centre = centre - rotate(np.array([[shift_back, 0.0]]), angle)[0] * 0.5

    def to_canvas(points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(pt) for pt in rotate(points, angle) + centre]

    def draw_head(offset_y: float) -> None:
        outline = head_outline(p, rng) + [0.0, offset_y]
        draw.polygon(to_canvas(outline * S), fill=head_colour)
        if mask:
            draw_parts.polygon(to_canvas(outline * S), fill=PART_VALUES["head"])  # the cap and vacuoles lie inside
        if p.acrosome_fraction > 0:
            cut = -0.5 + p.acrosome_fraction
            cap = outline.copy()
            cap[:, 0] = np.minimum(cap[:, 0], cut)
            draw.polygon(to_canvas(cap * S), fill=acrosome_colour)
        for _ in range(p.vacuoles):
            vx, vy = rng.uniform(-0.3, 0.3), offset_y + rng.uniform(-0.15, 0.15) * p.head_aspect * 2
            r = rng.uniform(0.05, 0.1) * S
            cx, cy = to_canvas(np.array([[vx, vy]]) * S)[0]
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter_colour((200, 180, 205), rng, 6))

    if p.double_head:
        spread = rng.uniform(0.35, 0.55) * p.head_aspect
        draw_head(-spread)
        draw_head(+spread)
    else:
        draw_head(0.0)

    # Neck: from the posterior end of the head, with insertion offset, angle and bend.
    start = np.array([0.45, p.neck_offset * 0.5 * p.head_aspect])
    heading = math.radians(p.neck_angle_deg)
    half = p.neck_length / 2
    middle = start + half * np.array([math.cos(heading), math.sin(heading)])
    heading2 = heading + math.radians(p.neck_bend_deg)
    end = middle + half * np.array([math.cos(heading2), math.sin(heading2)])
    neck_width = max(1, int(round(p.neck_thickness * S)))

    tail_width = max(1, int(round(0.08 * S)))  # a tail is about a sixth of the head's width
    tails = [heading2]
    if p.double_tail:
        split = math.radians(rng.uniform(18, 40))
        tails = [heading2 - split / 2, heading2 + split / 2]
    for tail_heading in tails:
        path = tail_path(end * S, tail_heading, p.tail_length * S, p, rng)
        draw.line(to_canvas(path), fill=tail_colour, width=tail_width, joint="curve")
        if mask:
            draw_parts.line(to_canvas(path), fill=PART_VALUES["tail"], width=tail_width, joint="curve")
    neck = to_canvas(np.stack([start, middle, end]) * S)
    draw.line(neck, fill=neck_colour, width=neck_width, joint="curve")
    if mask:
        draw_parts.line(neck, fill=PART_VALUES["neck"], width=neck_width, joint="curve")

    blur, noise = rng.uniform(0.3, 1.0), rng.uniform(2.0, 6.0)
    image = finish(canvas, (width, height), rng, blur, noise)
    meta = {
        "width": width,
        "height": height,
        "angle_deg": round(math.degrees(angle), 2),
        "blur": round(blur, 3),
        "noise": round(noise, 3),
    }
    meta.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(p).items()})
    if mask:
        return image, meta, parts.resize((width, height), Image.NEAREST)
    return image, meta
