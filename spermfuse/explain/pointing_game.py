"""The pointing game (Zhang et al. 2018) against part masks, with the baselines that give it a meaning.

A map *hits* when its peak lies within ``radius`` pixels of the part that carries the
explained class's defect (head, neck, tail; any part of the cell for Normal). The radius is
half the stride of the coarsest map explained, in the original image's pixels: a map whose
cell spans 16 px cannot place its peak finer than that, and a part 2 px wide would otherwise
be out of reach (issue 24). Each hit rate stands beside the same rate of rules that know
nothing of the model, on the same images and with the same radius:

- ``area_share``: a peak dropped uniformly at random hits the dilated part that often;
- ``centre``: the image centre;
- ``darkest``: the darkest pixel of the blurred grey image (stained heads are dark);
- ``untrained`` (filled in by the caller): the same architectures, randomly initialised.

Beside them the *energy* share (the part's share of the map's mass, Wang et al. 2020) and a
bootstrap 95 % interval of every hit rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..core.errors import ConfigError
from ..data.taxonomy import PART_VALUES

# The mask values of each part group; "sperm" (Normal: no defect part) is the whole cell.
PART_GROUPS = {
    "head": (PART_VALUES["head"],),
    "neck": (PART_VALUES["neck"],),
    "tail": (PART_VALUES["tail"],),
    "sperm": (PART_VALUES["head"], PART_VALUES["neck"], PART_VALUES["tail"]),
}
DARKEST_BLUR_SIGMA = 2.0  # px of the original image: a stain's dark core, not a single noisy pixel


def part_mask(mask: np.ndarray, part: str) -> np.ndarray:
    """Where ``part`` (a key of :data:`PART_GROUPS`) lies in a part mask (``taxonomy.PART_VALUES``)."""
    if part not in PART_GROUPS:
        raise ConfigError(f"part {part!r}: one of {', '.join(PART_GROUPS)}")
    return np.isin(mask, PART_GROUPS[part])


def dilate(inside: np.ndarray, radius: float) -> np.ndarray:
    """Every pixel within Euclidean distance ``radius`` of ``inside`` (radius 0: ``inside`` itself)."""
    if radius <= 0 or not inside.any():
        return inside.copy()
    return ndimage.distance_transform_edt(~inside) <= radius


def tolerance(width: int, height: int, input_size: int, map_size: int) -> float:
    """Half the stride of a ``map_size`` x ``map_size`` map over a letterboxed ``input_size``
    square, in the pixels of a ``width`` x ``height`` original (the letterbox scales the longer side)."""
    stride = input_size / map_size
    return 0.5 * stride * max(width, height) / input_size


def peak_of(heat: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's maximum (the first one in reading order on ties)."""
    row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(column)


def darkness_map(grey: np.ndarray, sigma: float = DARKEST_BLUR_SIGMA) -> np.ndarray:
    """A model-free 'explanation': the darkness of the blurred grey image [H, W], scaled to [0, 1]."""
    dark = -ndimage.gaussian_filter(np.asarray(grey, dtype=np.float64), sigma)
    spread = dark.max() - dark.min()
    return (dark - dark.min()) / spread if spread > 0 else np.zeros_like(dark)


def darkest_point(grey: np.ndarray, sigma: float = DARKEST_BLUR_SIGMA) -> tuple[int, int]:
    """(row, column) of the darkest pixel of ``grey`` [H, W] after a Gaussian blur: the
    model-free rule that a stained head is the darkest place of a sperm image."""
    return peak_of(darkness_map(grey, sigma))


def energy_share(heat: np.ndarray, inside: np.ndarray) -> float:
    """The share of the map's mass inside the part (sum map*mask / sum map); 0 for an all-zero map."""
    total = float(heat.sum())
    return float(heat[inside].sum()) / total if total > 0 else 0.0


@dataclass
class PointingCase:
    """One image's scores; ``untrained`` and ``part_switch`` are None when not measured."""

    part: str
    correct: bool
    hit: bool
    energy: float
    area_share: float  # of the dilated part: the hit rate of a uniformly random peak
    part_share: float  # of the part itself: the energy share of a uniform map
    radius: float  # the hit tolerance, original pixels
    centre: bool
    darkest: bool
    untrained: bool | None = None
    part_switch: bool | None = None


def score(
    heat: np.ndarray, mask: np.ndarray, grey: np.ndarray, part: str, radius: float, correct: bool
) -> PointingCase:
    """The pointing-game scores of one map ``heat`` against ``part`` of ``mask`` (both in the
    original image's geometry, as ``grey``, the image in grey levels)."""
    if heat.shape != mask.shape or grey.shape != mask.shape:
        raise ConfigError(
            f"a map of shape {heat.shape}, a mask of {mask.shape}, an image of {grey.shape}: all must be in the image's geometry"
        )
    inside = part_mask(mask, part)
    reach = dilate(inside, radius)
    return PointingCase(
        part=part,
        correct=correct,
        hit=bool(reach[peak_of(heat)]),
        energy=energy_share(heat, inside),
        area_share=float(reach.mean()),
        part_share=float(inside.mean()),
        radius=float(radius),
        centre=bool(reach[mask.shape[0] // 2, mask.shape[1] // 2]),
        darkest=bool(reach[darkest_point(grey)]),
    )


def hits(heat: np.ndarray, mask: np.ndarray, part: str, radius: float) -> bool:
    """Whether the peak of ``heat`` lies within ``radius`` of ``part`` (the untrained and
    part-switch maps are scored with this)."""
    return bool(dilate(part_mask(mask, part), radius)[peak_of(heat)])


def bootstrap_interval(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (cases resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    means = values[draws].mean(axis=1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


COLUMNS = (
    "group",
    "cells",
    "n",
    "hit_rate",
    "ci_low",
    "ci_high",
    "area_share",
    "centre",
    "darkest",
    "untrained",
    "energy",
    "part_share",
    "part_switch",
)


def _mean(values: Sequence) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise(cases: Sequence[PointingCase], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per part group and cell subset (``all``, ``correct``, ``misclassified``): the
    model's hit rate with its bootstrap 95 % interval beside every baseline (:data:`COLUMNS`)."""
    rows = []
    for group in [g for g in PART_GROUPS if any(c.part == g for c in cases)]:
        for cells, keep in (
            ("all", lambda c: True),
            ("correct", lambda c: c.correct),
            ("misclassified", lambda c: not c.correct),
        ):
            chosen = [c for c in cases if c.part == group and keep(c)]
            if not chosen:
                continue
            hit = np.array([c.hit for c in chosen], dtype=float)
            low, high = bootstrap_interval(hit, n_boot, seed)
            rows.append(
                {
                    "group": group,
                    "cells": cells,
                    "n": len(chosen),
                    "hit_rate": float(hit.mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "area_share": _mean([c.area_share for c in chosen]),
                    "centre": _mean([c.centre for c in chosen]),
                    "darkest": _mean([c.darkest for c in chosen]),
                    "untrained": _mean([c.untrained for c in chosen]),
                    "energy": _mean([c.energy for c in chosen]),
                    "part_share": _mean([c.part_share for c in chosen]),
                    "part_switch": _mean([c.part_switch for c in chosen]),
                }
            )
    return rows
