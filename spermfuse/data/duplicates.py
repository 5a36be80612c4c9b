"""Duplicate images, found when a data set is read: the same cell twice must never be trained on
and tested on, and never carry two labels.

Two kinds are found, from what each image decodes to (not its bytes, so a .bmp and a .png of the
same pixels are one image):

- **pixel-identical**: the same mode, size and pixels;
- **near-identical**: a re-crop, a resize or a re-encoding of the same picture. Each image is
  sampled on a ``SAMPLE_SIDE`` x ``SAMPLE_SIDE`` grid (the nearest pixel; squashed, whatever its
  aspect), turned grey and averaged down to a ``THUMBNAIL_SIDE`` x ``THUMBNAIL_SIDE`` thumbnail,
  centred and scaled to unit length; two images whose thumbnails correlate above
  ``NEAR_DUPLICATE_CORRELATION`` are one picture.

The check is always on, so it is built to cost little beside decoding (docs/REAL_DATA.md measures
it on SMIDS): only the thumbnail is computed for every image, from 96 x 96 of its pixels; the
pixels are compared (SHA-256) only for the few images whose mode, size and thumbnail are all equal
to another's, and of those only the first of each such fingerprint is decoded again
(:class:`Fingerprinter`).

The threshold, measured: copies resized by 0.8 or 1.25 and re-encoded as JPEG (quality 90) keep a
correlation above it for cells of 96, 120 and 160 px (tests/test_duplicates.py; the lowest of 100
cells at each size: 0.988), and so did such copies of one SMIDS image in ten (301 of 301, also
resized by 0.7); distinct cells of one class of the synthetic sperm18 set stay below it (same
file); in SMIDS, pairs above 0.98 are re-crops of one cell a few pixels apart (looked at, pair by
pair; some such re-crops fall just below and are missed). Heavier edits (a crop of part of the
cell, a rotation) are not caught. Images linked by either kind form one group (transitively); a
group holding two classes is a label conflict.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image

THUMBNAIL_SIDE = 32
# The grid each image is sampled on (nearest pixel) before it is averaged down to the thumbnail.
SAMPLE_SIDE = 3 * THUMBNAIL_SIDE
NEAR_DUPLICATE_CORRELATION = 0.98
POLICIES = ("error", "drop-conflicts", "keep")
# Bounds computed per block of rows, about this many at a time (1.2 MB of float32, within a core's
# cache here): the matrix is never held whole, and on SMIDS, read as train.py reads it, blocks of
# 1,000 rows (12 MB) took 1.6 times as long as blocks of 100 (the grouping: 68 ms against 43).
_BLOCK_ENTRIES = 300_000
# The bound's block side: 4 x 4 means (65 numbers an image) leave a few thousand candidate pairs in
# SMIDS's 3,000 images to check in full, and cost a sixteenth of the full products.
BOUND_BLOCK = 4


@dataclass(frozen=True)
class Fingerprint:
    """What an image is compared by: its mode and size, and its grey thumbnail (uint8 bytes)."""

    shape: tuple[str, int, int]
    thumbnail: bytes

    def key(self) -> tuple:
        """Equal for images that may be pixel-identical (and for those only)."""
        return self.shape, self.thumbnail


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded image (module docstring)."""
    # Sampled before anything else: the grey conversion and the averaging then touch 96 x 96
    # pixels, not the whole image (a third of the cost on SMIDS, docs/REAL_DATA.md). The steps
    # and their order are part of the thumbnail's definition: the groups depend on them (rounding).
    sampled = image.resize((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.NEAREST).convert("L")
    grey = sampled.reduce(SAMPLE_SIDE // THUMBNAIL_SIDE)
    return Fingerprint((image.mode, *image.size), grey.tobytes())


def images_by_key(fingerprints: Sequence[Fingerprint]) -> dict[tuple, list[int]]:
    """The indices of the images under each :meth:`Fingerprint.key`, in order."""
    by_key: dict[tuple, list[int]] = {}
    for i, print_ in enumerate(fingerprints):
        by_key.setdefault(print_.key(), []).append(i)
    return by_key


def pixel_digest(image: Image.Image) -> bytes:
    """SHA-256 of a decoded image's mode, size and pixels: equal only for pixel-identical images."""
    return hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).digest()


def unit_thumbnails(fingerprints: Sequence[Fingerprint]) -> np.ndarray:
    """The thumbnails as centred unit-length rows, so that a dot product is a correlation (a flat
    image, with nothing to correlate, is a zero row)."""
    joined = np.frombuffer(b"".join(f.thumbnail for f in fingerprints), dtype=np.uint8)
    rows = joined.reshape(len(fingerprints), THUMBNAIL_SIDE * THUMBNAIL_SIDE).astype(np.float32)
    # In place, without temporaries: each new array of SMIDS's size (12 MB) costs more in page
    # faults than the arithmetic it holds.
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    rows /= np.where(norms > 0, norms, 1.0)[:, None]
    return rows


def _bounding_rows(thumbnails: np.ndarray) -> np.ndarray:
    """Each unit thumbnail as its ``BOUND_BLOCK`` x ``BOUND_BLOCK`` block means, scaled so that
    their dot products are those of the block-constant images, and one more column: the length of
    what the means leave out. The dot product of two such rows bounds the thumbnails' correlation
    from above (:func:`near_pairs`)."""
    count, block = len(thumbnails), BOUND_BLOCK
    # Averaging each block as two small matrix products: ten times quicker than numpy's mean over axes.
    average = np.kron(np.eye(THUMBNAIL_SIDE // block, dtype=np.float32), np.full((block, 1), 1 / block, np.float32))
    images = thumbnails.reshape(count, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    means = (average.T @ images @ average).reshape(count, -1)
    # The block-constant part and the rest are orthogonal: |rest|^2 = |thumbnail|^2 - block^2 |means|^2.
    rest = np.einsum("ij,ij->i", thumbnails, thumbnails) - block**2 * np.einsum("ij,ij->i", means, means)
    return np.concatenate([block * means, np.sqrt(np.clip(rest, 0, None))[:, None]], axis=1)


def near_pairs(thumbnails: np.ndarray, threshold: float = NEAR_DUPLICATE_CORRELATION) -> list[tuple[int, int]]:
    """Every pair (i < j) of unit thumbnails that correlate above ``threshold``.

    Searched at a sixteenth of the cost first: a correlation is the dot product of the two block-mean
    images plus that of the remainders, which are orthogonal to them, and the second term is at
    most the product of the remainders' lengths (Cauchy-Schwarz). Pairs whose bound passes are then
    checked in full, so none is missed (tests/test_duplicates.py compares with the full search)."""
    bounding = _bounding_rows(thumbnails)
    pairs = []
    rows_per_block = max(1, _BLOCK_ENTRIES // max(len(thumbnails), 1))
    for start in range(0, len(thumbnails), rows_per_block):
        bound = bounding[start : start + rows_per_block] @ bounding[start:].T
        # flatnonzero: a fifth of nonzero's cost on a wide matrix. The margin is for float32 rounding.
        rows, columns = np.divmod(np.flatnonzero(bound > threshold - 1e-4), bound.shape[1])
        rows, columns = rows + start, columns + start
        later = columns > rows
        rows, columns = rows[later], columns[later]
        exact = np.einsum("ij,ij->i", thumbnails[rows], thumbnails[columns])
        pairs += [(i, j) for i, j, value in zip(rows.tolist(), columns.tolist(), exact.tolist()) if value > threshold]
    return pairs


@dataclass
class Fingerprinter:
    """Fingerprints taken image by image while a data set is decoded. An image whose fingerprint
    repeats an earlier one's has its pixel digest taken at once, while it is in memory, so that
    :meth:`groups` decodes again only the first image of each repeated fingerprint."""

    fingerprints: list[Fingerprint] = field(default_factory=list)
    digests: dict[int, bytes] = field(default_factory=dict)
    seen: set[tuple] = field(default_factory=set)

    def add(self, image: Image.Image) -> None:
        """Fingerprint the next image (index: the number added before it)."""
        print_ = fingerprint(image)
        key = print_.key()
        if key in self.seen:
            self.digests[len(self.fingerprints)] = pixel_digest(image)
        self.seen.add(key)
        self.fingerprints.append(print_)

    def extend(self, later: Fingerprinter) -> None:
        """Append the images ``later`` took (the next stretch of the same files). An image there
        that repeats a fingerprint of this one has no digest yet: :meth:`groups` decodes it again."""
        self.digests.update({len(self.fingerprints) + i: digest for i, digest in later.digests.items()})
        self.fingerprints += later.fingerprints
        self.seen |= later.seen

    def undigested(self) -> list[int]:
        """The images whose fingerprint another shares and whose digest :meth:`groups` would
        decode them again for."""
        shared = (same for same in images_by_key(self.fingerprints).values() if len(same) > 1)
        return sorted(i for same in shared for i in same if i not in self.digests)

    def groups(self, reread: Callable[[int], Image.Image]) -> list[DuplicateGroup]:
        """:func:`duplicate_groups` of the images added; ``reread(i)`` decodes image i again."""

        def digest(i: int) -> bytes:
            if i not in self.digests:
                self.digests[i] = pixel_digest(reread(i))
            return self.digests[i]

        return duplicate_groups(self.fingerprints, digest)


@dataclass
class DuplicateGroup:
    """Images that are one picture: their indices, split into sets of pixel-identical images."""

    members: list[int]
    identical: list[list[int]]

    @property
    def near(self) -> bool:
        """Whether any two members differ in pixels."""
        return len(self.identical) > 1


class _Groups:
    """Union-find over image indices."""

    def __init__(self, count: int):
        self.parent = list(range(count))

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.root(j)] = self.root(i)


def duplicate_groups(
    fingerprints: Sequence[Fingerprint],
    digest: Callable[[int], bytes],
    threshold: float = NEAR_DUPLICATE_CORRELATION,
) -> list[DuplicateGroup]:
    """The groups of two or more images that are one picture (module docstring), in order of
    their first member. ``digest(i)`` gives image i's :func:`pixel_digest`; it is asked only for
    images whose fingerprint equals another's."""
    groups = _Groups(len(fingerprints))
    by_key = images_by_key(fingerprints)
    # An image's identity: its fingerprint, and its pixels' digest where the fingerprint is shared.
    identity: dict[int, tuple] = {i: key for key, same in by_key.items() for i in same}
    for same in (same for same in by_key.values() if len(same) > 1):
        first: dict[tuple, int] = {}
        for i in same:
            identity[i] += (digest(i),)
            groups.join(first.setdefault(identity[i], i), i)
    if fingerprints:
        for i, j in near_pairs(unit_thumbnails(fingerprints), threshold):
            groups.join(i, j)
    members: dict[int, list[int]] = {}
    for i in range(len(fingerprints)):
        members.setdefault(groups.root(i), []).append(i)
    found = []
    for group in (sorted(m) for m in members.values() if len(m) > 1):
        identical: dict[tuple, list[int]] = {}
        for i in group:
            identical.setdefault(identity[i], []).append(i)
        found.append(DuplicateGroup(group, list(identical.values())))
    return sorted(found, key=lambda g: g.members[0])


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
