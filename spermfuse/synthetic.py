"""Procedural microscopy data sets, the embedded default when no real data is at hand.

- ``sperm18``: single-sperm crops in the 18 Hi-LabSpermMorpho classes, rendered like a
  Diff-Quik-stained bright-field image (beige background, purple head with a paler
  acrosome cap, midpiece, thin wavy tail). Each abnormal class changes what an
  embryologist looks at; neighbouring classes overlap in their parameters so the
  subtle classes stay hard.
- ``hushem4``: 131x131 sperm-head images, classes Normal, Tapered, Pyriform, Amorphous.
- ``blood4``: peripheral-blood-smear-like images (erythrocytes and one stained
  lymphoid cell) in the four ALL classes of method B.

Images are written as ImageFolder PNGs plus ``metadata.csv`` with every image's
generating parameters. Same seed, same files, byte for byte: each image draws from
its own generator seeded by (seed, class, index).

With ``patients=N`` every image also belongs to one of N synthetic patients (its file name
ends in ``_patient<id>``, and ``metadata.csv`` has a ``patient`` column). A patient has its
own look (stain cast, background brightness, optics blur) and a skewed mix of classes, as
the slides of one real patient do: a network can learn the look as a shortcut, which only
patient-disjoint folds expose. Without ``patients`` the files are byte-identical to before.

With ``masks=True`` (sperm18) every image also gets a part mask, the ground truth of where
each defect is: ``metadata.csv``'s ``mask`` column names it.

Command line: ``python -m spermfuse.synthetic --kind sperm18 --out DIR [--per-class N] [--patients N] [--masks]``.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import cli
from .files import atomic_write_bytes
from .errors import ConfigError

log = logging.getLogger(__name__)

SPERM18_CLASSES = [
    "AmorfHead", "AsymmetricNeck", "CurlyTail", "DoubleHead", "DoubleTail", "LongTail",
    "NarrowAcrosome", "Normal", "PinHead", "PyriformHead", "RounHead", "ShortTail",
    "TaperedHead", "ThickNeck", "ThinNeck", "TwistedNeck", "TwistedTail", "VacuolatedHead",
]  # fmt: skip
HUSHEM4_CLASSES = ["Amorphous", "Normal", "Pyriform", "Tapered"]
BLOOD4_CLASSES = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]

# Relative class frequencies shaped like Hi-LabSpermMorpho's: VacuolatedHead the most
# common (1697 of 18,456), DoubleHead (48), LongTail and ThinNeck the rarest. Only those
# counts are published in the text; the rest keep that ordering, not exact values.
SPERM18_FREQUENCY = {
    "AmorfHead": 1400, "AsymmetricNeck": 900, "CurlyTail": 1100, "DoubleHead": 48, "DoubleTail": 500,
    "LongTail": 110, "NarrowAcrosome": 900, "Normal": 1600, "PinHead": 600, "PyriformHead": 1000,
    "RounHead": 700, "ShortTail": 900, "TaperedHead": 1200, "ThickNeck": 700, "ThinNeck": 150,
    "TwistedNeck": 700, "TwistedTail": 800, "VacuolatedHead": 1697,
}  # fmt: skip
DEFAULT_SCALE = {"sperm18": 0.08, "hushem4": None, "blood4": None}
MIN_PER_CLASS = 12
SUPERSAMPLE = 2
PATIENT_STREAM = 7919  # seeds the patients' draws apart from every image's own
# Bumped whenever rendering changes, so cached default data sets are regenerated.
GENERATOR_VERSION = 3


# --------------------------------------------------------------------------- drawing helpers


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
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


def finish(canvas: Image.Image, size: tuple[int, int], rng: np.random.Generator, blur: float, noise: float) -> Image.Image:
    """Downsample the supersampled drawing, blur like optics, add sensor noise."""
    image = canvas.resize(size, Image.BOX)
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def jitter_colour(colour, rng: np.random.Generator, amount: float = 12.0) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def draw_debris(draw: ImageDraw.ImageDraw, width: int, height: int, rng: np.random.Generator, count: int) -> None:
    for _ in range(count):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(1.0, 3.5) * SUPERSAMPLE
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r], fill=jitter_colour((150, 120, 150), rng, 20))


# --------------------------------------------------------------------------- sperm18


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
            radius += p.head_irregularity * rng.normal(0, 1) / harmonic * np.cos(harmonic * phi + rng.uniform(0, 2 * np.pi))
        x, y = x * radius, y * radius
    return np.stack([x, y], axis=1)


def tail_path(start: np.ndarray, heading: float, length_px: float, p: SpermParams, rng: np.random.Generator) -> np.ndarray:
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


PART_VALUES = {"background": 0, "head": 1, "neck": 2, "tail": 3}
MASK_FOLDER = ".masks"
# The part that carries each class's defect: where an explanation should point. A Normal
# sperm has no defect; the whole cell (any part, not the background) is its answer.
DEFECT_PART = {
    **dict.fromkeys(["AmorfHead", "DoubleHead", "NarrowAcrosome", "PinHead", "PyriformHead", "RounHead", "TaperedHead", "VacuolatedHead"], "head"),
    **dict.fromkeys(["AsymmetricNeck", "ThickNeck", "ThinNeck", "TwistedNeck"], "neck"),
    **dict.fromkeys(["CurlyTail", "DoubleTail", "LongTail", "ShortTail", "TwistedTail"], "tail"),
    "Normal": "sperm",
}


def render_sperm(label: str, rng: np.random.Generator, mask: bool = False) -> tuple[Image.Image, dict] | tuple[Image.Image, dict, Image.Image]:
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
    meta = {"width": width, "height": height, "angle_deg": round(math.degrees(angle), 2), "blur": round(blur, 3), "noise": round(noise, 3)}
    meta.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(p).items()})
    if mask:
        return image, meta, parts.resize((width, height), Image.NEAREST)
    return image, meta


# --------------------------------------------------------------------------- hushem4


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
    meta = {"head_aspect": round(p.head_aspect, 4), "head_taper": round(p.head_taper, 4), "head_irregularity": round(p.head_irregularity, 4), "blur": round(blur, 3)}
    return finish(canvas, (size, size), rng, blur, noise), meta


# --------------------------------------------------------------------------- blood4


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
    grain = np.asarray(Image.fromarray((rng.random((W // 4, W // 4)) * 255).astype(np.uint8)).resize((W, W), Image.BILINEAR), dtype=np.float32)
    pixels[inside] += (grain[inside, None] - 128) * texture * 0.6
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    blur, noise = rng.uniform(0.4, 1.0), rng.uniform(2, 5)
    meta = {"nucleus_radius_px": round(nucleus_r / SUPERSAMPLE, 2), "cytoplasm_ratio": round(rim, 3), "texture": texture}
    return finish(canvas, (size, size), rng, blur, noise), meta


# --------------------------------------------------------------------------- data set writer


KINDS: dict[str, tuple[list[str], Callable]] = {
    "sperm18": (SPERM18_CLASSES, render_sperm),
    "hushem4": (HUSHEM4_CLASSES, render_head),
    "blood4": (BLOOD4_CLASSES, render_blood),
}


def class_counts(kind: str, per_class: int | None = None, scale: float | None = None) -> dict[str, int]:
    """Images per class: ``per_class`` each, or the paper-shaped imbalance times ``scale``."""
    classes = KINDS[kind][0]
    if per_class is not None:
        return {name: per_class for name in classes}
    if kind == "sperm18":
        scale = DEFAULT_SCALE["sperm18"] if scale is None else scale
        return {name: max(MIN_PER_CLASS, int(round(SPERM18_FREQUENCY[name] * scale))) for name in classes}
    # HuSHeM has 216 heads (42-76 per class); the ALL set 3,242 images (512 benign).
    defaults = {"hushem4": [76, 54, 43, 43], "blood4": [128, 244, 240, 200]}[kind]
    factor = 1.0 if scale is None else scale
    return {name: max(MIN_PER_CLASS, int(round(n * factor))) for name, n in zip(classes, defaults)}


@dataclass(frozen=True)
class PatientLook:
    """What one patient's (slide's) images share: a stain cast, a brightness shift, extra blur."""

    stain: tuple[float, float, float]  # per-channel gain
    brightness: float  # added to every channel, in grey levels
    blur: float  # extra Gaussian blur (pixels)

    def apply(self, image: Image.Image) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32) * np.array(self.stain, dtype=np.float32) + self.brightness
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
        return image.filter(ImageFilter.GaussianBlur(self.blur)) if self.blur > 0 else image


def patient_looks(seed: int, patients: int) -> list[PatientLook]:
    """The look of every patient, from its own generator (independent of the images' draws)."""
    looks = []
    for p in range(patients):
        rng = np.random.default_rng(np.random.SeedSequence([seed, PATIENT_STREAM, p]))
        stain = tuple(float(g) for g in 1.0 + rng.normal(0, 0.07, 3))
        looks.append(PatientLook(stain, float(rng.normal(0, 10)), float(rng.uniform(0, 0.8))))
    return looks


def assign_patients(counts: dict[str, int], seed: int, patients: int) -> dict[str, list[int]]:
    """The patient of every image: each class draws from its own skewed mix of patients
    (Dirichlet 0.5), and a class of two or more images always spans at least two patients."""
    assigned = {}
    for c, (label, count) in enumerate(counts.items()):
        rng = np.random.default_rng(np.random.SeedSequence([seed, PATIENT_STREAM, patients, c]))
        chosen = rng.choice(patients, size=count, p=rng.dirichlet(np.full(patients, 0.5))).tolist()
        if count >= 2 and len(set(chosen)) == 1:
            chosen[-1] = (chosen[0] + 1) % patients
        assigned[label] = chosen
    return assigned


def render(kind: str, label: str, seed: int, index: int) -> tuple[Image.Image, dict]:
    """Image ``index`` of class ``label``, from its own seeded generator."""
    classes, renderer = KINDS[kind]
    return renderer(label, _image_rng(classes, label, seed, index))


def render_with_mask(label: str, seed: int, index: int) -> tuple[Image.Image, dict, Image.Image]:
    """sperm18 image ``index`` of ``label`` (the same as :func:`render`'s) and its part mask."""
    return render_sperm(label, _image_rng(SPERM18_CLASSES, label, seed, index), mask=True)


def _image_rng(classes: list[str], label: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, classes.index(label), index]))


def generate(
    out_dir: str | Path,
    kind: str = "sperm18",
    seed: int = 42,
    per_class: int | None = None,
    scale: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    patients: int | None = None,
    masks: bool = False,
    replace_incomplete: bool = False,
) -> Path:
    """Write a synthetic data set as ImageFolder PNGs plus ``metadata.csv``; returns ``out_dir``.

    The folder is built under a private temporary name and renamed when complete, so an
    interrupted run never leaves a half-written data set behind, and two processes never
    meet. ``replace_incomplete`` (the cache, :func:`generate_once`): an existing folder
    without ``metadata.csv`` is replaced, and a complete one another process published
    meanwhile is used. ``patients``: see the
    module docstring. ``masks`` (sperm18): also each image's part mask (``PART_VALUES``) as
    ``.masks/<class>/<name>.png``, its path in the ``mask`` column; the folder is hidden so
    that ImageFolder discovery does not take it for a class. The images do not change.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if masks and kind != "sperm18":
        raise ConfigError(f"--masks: part masks exist for sperm18 only, not {kind}")
    if patients is not None and patients < 2:
        raise ConfigError(f"--patients {patients}: give at least 2 patients")
    out_dir = Path(out_dir)
    if not replace_incomplete and out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: folder exists and is not empty; choose another --out or delete it")
    try:  # a private temporary name: two processes generating the same set never meet
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial", dir=out_dir.parent))
    except OSError as error:
        raise ConfigError(f"{out_dir.parent}: not writable ({error.strerror}); choose another --out, or set $SPERMFUSE_CACHE to a writable folder") from None
    try:
        _write_set(tmp_dir, kind, seed, per_class, scale, masks, patients, progress)
        try:
            tmp_dir.rename(out_dir)  # replaces an absent or empty folder
        except OSError:
            if (out_dir / "metadata.csv").is_file():
                log.info("%s: another process generated the same set first; using it", out_dir)
            else:  # no metadata.csv (written last): an interrupted older version's leftover
                leftover = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".old", dir=out_dir.parent))
                os.rename(out_dir, leftover / out_dir.name)
                shutil.rmtree(leftover, ignore_errors=True)
                tmp_dir.rename(out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _write_set(tmp_dir: Path, kind: str, seed: int, per_class: int | None, scale: float | None, masks: bool, patients: int | None, progress) -> None:
    counts = class_counts(kind, per_class, scale)
    total, done = sum(counts.values()), 0
    looks = patient_looks(seed, patients) if patients else []
    assigned = assign_patients(counts, seed, patients) if patients else {}
    rows = []
    for label, count in counts.items():
        (tmp_dir / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            if masks:
                image, meta, mask = render_with_mask(label, seed, i)
            else:
                image, meta = render(kind, label, seed, i)
            stem = f"{label.replace(' ', '_')}_{i:05d}"
            if patients:
                patient = assigned[label][i]
                image, stem = looks[patient].apply(image), f"{stem}_patient{patient:03d}"
                meta = {**meta, "patient": f"{patient:03d}"}
            rel = f"{label}/{stem}.png"
            image.save(tmp_dir / rel, optimize=False)
            if masks:
                mask_rel = f"{MASK_FOLDER}/{label}/{stem}.png"
                (tmp_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                mask.save(tmp_dir / mask_rel, optimize=False)
                meta = {**meta, "mask": mask_rel}
            rows.append({"path": rel, "label": label, **meta})
            done += 1
            if progress:
                progress(done, total)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(tmp_dir / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def generate_once(out_dir: str | Path, kind: str = "sperm18", **options) -> Path:
    """:func:`generate` into a cache folder unless it already holds a complete set (``metadata.csv``
    is written last); a folder without one is an interrupted or foreign leftover and is replaced."""
    out_dir = Path(out_dir)
    if not (out_dir / "metadata.csv").exists():
        log.info("generating the synthetic %s set (%s) in %s (once)", kind, ", ".join(f"{k} {v}" for k, v in options.items()), out_dir)
        generate(out_dir, kind, replace_incomplete=True, **options)
    return out_dir


def preview(kind: str, path: str | Path, per_class: int = 4, seed: int = 42, tile: int = 96) -> Path:
    """A labelled grid with ``per_class`` samples of every class, for a look at a glance."""
    classes = KINDS[kind][0]
    label_width = 120
    sheet = Image.new("RGB", (label_width + per_class * tile, len(classes) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for row, label in enumerate(classes):
        draw.text((6, row * tile + tile // 2 - 6), label, fill="black")
        for col in range(per_class):
            image, _ = render(kind, label, seed, col)
            image.thumbnail((tile - 4, tile - 4))
            sheet.paste(image, (label_width + col * tile + (tile - image.width) // 2, row * tile + (tile - image.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spermfuse.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(KINDS), default="sperm18")
    parser.add_argument("--out", type=Path, help="folder to write (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--per-class", type=int, help="images per class (default: paper-shaped imbalance)")
    parser.add_argument("--scale", type=float, help="multiply the default class counts (sperm18 default 0.08)")
    parser.add_argument("--preview", type=Path, help="write a labelled grid of samples to this PNG")
    parser.add_argument("--masks", action="store_true", help="sperm18: also write each image's part mask (0 background, 1 head, 2 neck, 3 tail)")
    parser.add_argument("--patients", type=int, help="assign each image to one of N patients with their own look (train with --group-pattern 'patient(\\d+)')")
    args = parser.parse_args(argv)
    if args.out is None and args.preview is None:
        parser.error("give --out DIR and/or --preview FILE.png")
    if args.per_class is not None and args.per_class < 1:
        parser.error("--per-class must be >= 1")
    return cli.run(lambda: write_from_command_line(args))


def write_from_command_line(args: argparse.Namespace) -> None:
    if args.preview:
        log.info("preview: %s", preview(args.kind, args.preview, seed=args.seed))
    if args.out:
        start = time.perf_counter()
        out = generate(args.out, args.kind, args.seed, args.per_class, args.scale, progress=_log_progress, patients=args.patients, masks=args.masks)
        n = sum(class_counts(args.kind, args.per_class, args.scale).values())
        log.info("wrote %d %s images to %s in %.1f s", n, args.kind, out, time.perf_counter() - start)


def _log_progress(done: int, total: int) -> None:
    if done == total or done % 200 == 0:
        log.info("  %d/%d images", done, total)


if __name__ == "__main__":
    sys.exit(main())
