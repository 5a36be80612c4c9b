"""Duplicate images, found when a data set is read: the same cell twice must never be trained on
and tested on, and never carry two labels.

Two kinds are found, from what each image decodes to (not its bytes, so a .bmp and a .png of the
same pixels are one image):

- **pixel-identical**: the same mode, size and pixels (SHA-256 of the decoded pixels);
- **near-identical**: a re-crop, a resize or a re-encoding of the same picture. Each image is
  letterboxed onto its border's median grey, reduced to ``THUMBNAIL_SIDE`` x ``THUMBNAIL_SIDE``,
  centred and scaled to unit length; two images whose thumbnails correlate above
  ``NEAR_DUPLICATE_CORRELATION`` are one picture.

The threshold, measured (docs/REAL_DATA.md): copies resized by 0.8 or 1.25 and re-encoded as
JPEG (quality 90) keep a correlation above 0.99 (tests/test_duplicates.py); the nearest distinct
cell of the synthetic sperm18 set is at most 0.92; in SMIDS, pairs above 0.98 are re-crops of
one cell a pixel or two apart. Heavier edits (a crop of part of the cell, a rotation) are not
caught. Images linked by either kind form one group (transitively); a group holding two classes is
a label conflict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

THUMBNAIL_SIDE = 32
NEAR_DUPLICATE_CORRELATION = 0.98
POLICIES = ("error", "drop-conflicts", "keep")
_BLOCK = 2048  # thumbnails compared per block: the correlation matrix is never held whole


@dataclass(frozen=True)
class Fingerprint:
    """What an image is compared by: its decoded pixels' digest and its normalised thumbnail."""

    pixels: bytes
    thumbnail: np.ndarray


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded image (module docstring)."""
    pixels = hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).digest()
    grey = image.convert("L")
    scale = THUMBNAIL_SIDE / max(grey.size)
    grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.BOX)
    values = np.asarray(grey)
    border = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
    canvas = Image.new("L", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), int(np.median(border)))
    canvas.paste(grey, ((THUMBNAIL_SIDE - grey.width) // 2, (THUMBNAIL_SIDE - grey.height) // 2))
    small = np.asarray(canvas, dtype=np.float32).ravel()
    small = small - small.mean()
    norm = float(np.linalg.norm(small))
    return Fingerprint(pixels, small / norm if norm > 0 else small)  # a flat image correlates with nothing


@dataclass
class DuplicateGroup:
    """Images that are one picture: their indices, and whether any two differ in pixels."""

    members: list[int]
    near: bool = False


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def near_pairs(thumbnails: np.ndarray, threshold: float = NEAR_DUPLICATE_CORRELATION) -> list[tuple[int, int]]:
    """Every pair (i < j) whose thumbnails correlate above ``threshold``, block by block."""
    pairs = []
    for start in range(0, len(thumbnails), _BLOCK):
        block = thumbnails[start : start + _BLOCK] @ thumbnails[start:].T
        rows, columns = np.nonzero(block > threshold)
        pairs += [(start + i, start + j) for i, j in zip(rows.tolist(), columns.tolist()) if j > i]
    return pairs


def duplicate_groups(
    fingerprints: Sequence[Fingerprint], threshold: float = NEAR_DUPLICATE_CORRELATION
) -> list[DuplicateGroup]:
    """The groups of two or more images that are one picture (module docstring), in order of
    their first member."""
    parent = list(range(len(fingerprints)))
    first: dict[bytes, int] = {}
    for i, print_ in enumerate(fingerprints):
        j = first.setdefault(print_.pixels, i)
        parent[_root(parent, i)] = _root(parent, j)
    if fingerprints:
        thumbnails = np.stack([f.thumbnail for f in fingerprints])
        for i, j in near_pairs(thumbnails, threshold):
            parent[_root(parent, j)] = _root(parent, i)
    members: dict[int, list[int]] = {}
    for i in range(len(fingerprints)):
        members.setdefault(_root(parent, i), []).append(i)
    groups = [sorted(m) for m in members.values() if len(m) > 1]
    return sorted(
        (DuplicateGroup(m, len({fingerprints[i].pixels for i in m}) > 1) for m in groups), key=lambda g: g.members[0]
    )


@dataclass
class DuplicateReport:
    """What :func:`resolve` decided: the images kept, each kept copy's first image (both indices
    into the kept list), and the groups found."""

    keep: list[int]
    copies: dict[int, int] = field(default_factory=dict)
    groups: list[DuplicateGroup] = field(default_factory=list)
    conflicts: list[DuplicateGroup] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was found and done."""
        exact = sum(not g.near for g in self.groups)
        files = sum(len(g.members) for g in self.groups)
        line = f"{len(self.groups)} groups of duplicate images ({files} files; {exact} pixel-identical, {len(self.groups) - exact} near-identical)"
        if self.conflicts:
            line += f", {len(self.conflicts)} of them across classes"
        return line


def resolve(
    groups: Sequence[DuplicateGroup], names: Sequence[str], count: int, policy: str = "error"
) -> tuple[DuplicateReport, DuplicateGroup | None]:
    """Apply ``--duplicates``: the images to keep and the copies to tie together. A group
    across classes is returned as the conflict to refuse with ``error``; ``drop-conflicts``
    drops its images, ``keep`` keeps them tied like any copies."""
    conflicts = [g for g in groups if len({names[i] for i in g.members}) > 1]
    if conflicts and policy == "error":
        return DuplicateReport(list(range(count)), groups=list(groups), conflicts=conflicts), conflicts[0]
    dropped = {i for g in conflicts for i in g.members} if policy == "drop-conflicts" else set()
    keep = [i for i in range(count) if i not in dropped]
    position = {old: new for new, old in enumerate(keep)}
    copies = {position[i]: position[g.members[0]] for g in groups if g.members[0] not in dropped for i in g.members[1:]}
    return DuplicateReport(keep, copies, list(groups), conflicts), None
