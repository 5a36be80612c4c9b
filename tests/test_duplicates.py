"""Duplicate images at entry (spermfuse/data/duplicates.py): found, tied to one side of every split,
and a copy under another class refused, dropped or kept as asked."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from spermfuse.core.errors import DataError
from spermfuse.data import duplicates, reading, splits
from spermfuse.data.duplicates import (
    BOUND_BLOCK,
    NEAR_DUPLICATE_CORRELATION,
    THUMBNAIL_SIDE,
    Fingerprinter,
    duplicate_groups,
    fingerprint,
    near_pairs,
    pixel_digest,
    unit_thumbnails,
)
from spermfuse.data.folders import discover
from spermfuse.synthetic import render


def cell(index: int, label: str = "TaperedHead", side: int = 96) -> Image.Image:
    """A real-looking sperm cell of the synthetic renderer, ``side`` px square: each index another cell."""
    return render("sperm18", label, 7, index)[0].resize((side, side), Image.Resampling.BICUBIC)


def reencoded(image: Image.Image, scale: float, quality: int = 90) -> Image.Image:
    """A resized copy saved as JPEG and read back: what a second export of one picture looks like."""
    size = (round(image.width * scale), round(image.height * scale))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def correlation(a: Image.Image, b: Image.Image) -> float:
    first, second = unit_thumbnails([fingerprint(a), fingerprint(b)])
    return float(first @ second)


def groups_of(images: list[Image.Image]):
    return duplicate_groups([fingerprint(image) for image in images], lambda i: pixel_digest(images[i]))


@pytest.mark.parametrize("scale", [0.8, 1.25])
@pytest.mark.parametrize("side", [96, 120, 160])  # SMIDS's images are 80-264 px
def test_a_resized_and_reencoded_copy_is_a_near_duplicate(scale, side):
    for index in range(10):
        original = cell(index, side=side)
        assert correlation(original, reencoded(original, scale)) > NEAR_DUPLICATE_CORRELATION


def test_different_cells_of_one_class_are_not_duplicates():
    assert groups_of([cell(index) for index in range(40)]) == []


def test_the_same_pixels_in_bmp_and_png_are_pixel_identical(tmp_path):
    image = cell(0)
    image.save(tmp_path / "a.bmp")
    image.save(tmp_path / "b.png")
    (group,) = groups_of([Image.open(tmp_path / name).convert("RGB") for name in ("a.bmp", "b.png")])
    assert group.members == [0, 1] and not group.near


def test_pixels_are_compared_only_for_images_whose_thumbnails_are_equal():
    images = [cell(index) for index in range(20)] + [cell(3)]
    asked = []
    groups = duplicate_groups(
        [fingerprint(image) for image in images], lambda i: asked.append(i) or pixel_digest(images[i])
    )
    assert sorted(asked) == [3, 20]
    assert [(g.members, g.near) for g in groups] == [([3, 20], False)]


def test_only_the_first_image_of_a_repeated_fingerprint_is_decoded_again():
    images = [cell(index) for index in range(20)] + [cell(3), cell(3)]
    fingerprints, reread = Fingerprinter(), []
    for image in images:
        fingerprints.add(image)
    groups = fingerprints.groups(lambda i: reread.append(i) or images[i])
    assert reread == [3]  # 20 and 21 were digested as they were added
    assert [(g.members, g.near) for g in groups] == [([3, 20, 21], False)]


def test_a_slightly_edited_copy_is_near_identical_not_pixel_identical():
    image = cell(0)
    edited = image.copy()
    edited.putpixel((50, 50), tuple(value ^ 1 for value in image.getpixel((50, 50))))
    (group,) = groups_of([image, edited])
    assert group.near and group.identical == [[0], [1]]


def test_flat_images_are_duplicates_only_when_their_pixels_are_equal():
    grey = [Image.new("RGB", (64, 64), (level, level, level)) for level in (120, 120, 121)]
    (group,) = groups_of(grey)
    assert group.members == [0, 1] and not group.near


@pytest.mark.parametrize("block_entries", [None, 1000])  # one block; blocks of 6 rows
def test_the_quick_pair_search_finds_every_pair_the_full_search_finds(block_entries, monkeypatch):
    if block_entries is not None:
        monkeypatch.setattr(duplicates, "_BLOCK_ENTRIES", block_entries)
    generator = np.random.default_rng(0)
    smooth = generator.normal(size=(60, 8, 8)).repeat(4, axis=1).repeat(4, axis=2).reshape(60, -1)
    # Copies with noise of every strength: correlations spread across the threshold.
    noisy = smooth[:30] + generator.normal(size=(30, 1024)) * np.linspace(0.01, 0.5, 30)[:, None]
    # Pairs that share their fine detail but not their block means: only the full search's
    # second term (the remainders) keeps them.
    side = THUMBNAIL_SIDE // BOUND_BLOCK
    detail = generator.normal(size=(20, side, BOUND_BLOCK, side, BOUND_BLOCK))
    detail = (detail - detail.mean(axis=(2, 4), keepdims=True)).reshape(20, -1)
    shared = (
        np.concatenate([detail, detail])
        + generator.normal(size=(40, 8, 8)).repeat(4, 1).repeat(4, 2).reshape(40, -1)
        * np.linspace(0.05, 0.3, 40)[:, None]
    )
    rows = np.concatenate([smooth, noisy, shared, generator.normal(size=(20, 1024))]).astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    full = rows @ rows.T
    expected = [(i, j) for i, j in zip(*np.nonzero(full > NEAR_DUPLICATE_CORRELATION)) if j > i]
    assert len(expected) >= 5 and ((full > 0.9) & (full <= NEAR_DUPLICATE_CORRELATION)).any()
    assert sorted(near_pairs(rows)) == sorted((int(i), int(j)) for i, j in expected)


def write_set(root, copies_across_classes: bool = False):
    """Two classes of 12 distinct cells each; cell 0 of class A again as a resized JPEG in A, and
    (optionally) as a BMP in class B."""
    for label, offset in (("A", 0), ("B", 100)):
        (root / label).mkdir(parents=True)
        for index in range(12):
            cell(offset + index, "TaperedHead" if label == "A" else "PyriformHead").save(root / label / f"{index}.png")
    reencoded(cell(0), 1.25).save(root / "A" / "0 (copy).jpg")
    if copies_across_classes:
        cell(0).save(root / "B" / "Normal_0.bmp")
    return root


def test_a_copy_under_another_class_stops_in_one_line_naming_both_files(tmp_path):
    root = write_set(tmp_path / "data", copies_across_classes=True)
    with pytest.raises(DataError, match=r"B/Normal_0.bmp: the same image as .*A/0.png \(pixel-identical\)") as error:
        discover(root)
    assert "--duplicates drop-conflicts" in str(error.value) and "\n" not in str(error.value)


def test_drop_conflicts_drops_the_whole_group_and_keep_keeps_it(tmp_path, caplog):
    root = write_set(tmp_path / "data", copies_across_classes=True)
    with caplog.at_level(logging.WARNING):
        dropped = discover(root, duplicates="drop-conflicts")
    assert len(dropped) == 23 and not any(p.startswith("A/0") or "Normal_0" in p for p in dropped.paths)
    assert "1 groups of duplicate images (3 files" in caplog.text and "dropped: 3 files" in caplog.text
    kept = discover(root, duplicates="keep")
    assert len(kept) == 26 and len(kept.copies) == 2


def test_a_same_class_copy_is_tied_to_its_first_image(tmp_path):
    samples = discover(write_set(tmp_path / "data"))
    ((copy, first),) = samples.copies.items()
    assert {samples.paths[first], samples.paths[copy]} == {"A/0.png", "A/0 (copy).jpg"}


def copy_sets(count: int, per_class: int = 30):
    """A labels array with ``count`` copies tied to other images, for the split tests."""
    rng = np.random.default_rng(count)
    labels = np.repeat([0, 1], per_class)
    firsts = rng.choice(len(labels), count, replace=False)
    copies = {}
    for first in firsts:
        copy = int(
            rng.choice(
                [i for i in range(len(labels)) if i not in firsts and i not in copies and labels[i] == labels[first]]
            )
        )
        copies[copy] = int(first)
    return labels, copies


def test_no_copy_straddles_folds_validation_or_calibration():
    apart_without = 0  # the same splits without ``copies`` do separate some: the check can fail
    for draw in range(20):
        labels, copies = copy_sets(6 + draw % 5)
        folds = splits.make_folds(labels, ["a", "b"], 3, draw)
        for copy, first in copies.items():
            folds[copy] = folds[first]
        for fold in (1, 2, 3):
            split = splits.fold_split(folds, labels, fold, 0.2, draw, cal_fraction=0.15, copies=copies)
            side = {i: name for name, part in split.parts().items() for i in part.tolist()}
            assert all(side[copy] == side[first] for copy, first in copies.items())
            plain = splits.fold_split(folds, labels, fold, 0.2, draw, cal_fraction=0.15)
            side = {i: name for name, part in plain.parts().items() for i in part.tolist()}
            apart_without += sum(side[copy] != side[first] for copy, first in copies.items())
    assert apart_without > 0


def test_a_folds_csv_that_splits_duplicates_is_refused(tmp_path):
    samples = discover(write_set(tmp_path / "data"))
    folds_csv = tmp_path / "folds.csv"
    folds = splits.load_or_create_folds(samples, folds_csv, k=2, seed=0)
    ((copy, first),) = samples.copies.items()
    assert folds[copy] == folds[first]
    lines = folds_csv.read_text().splitlines()
    moved = [
        f"{line.rpartition(',')[0]},{3 - folds[copy]}" if line.startswith(samples.paths[copy] + ",") else line
        for line in lines
    ]
    assert moved != lines
    folds_csv.write_text("\n".join(moved) + "\n")
    with pytest.raises(DataError, match="different folds .* delete folds.csv"):
        splits.load_or_create_folds(samples, folds_csv, k=2, seed=0)


def test_reading_in_two_processes_finds_what_one_process_finds(tmp_path):
    root = write_set(tmp_path / "data", copies_across_classes=True)
    (root / "B" / "Normal_0 (again).png").write_bytes((root / "A" / "3.png").read_bytes())
    one, two = (discover(root, duplicates="keep", processes=count) for count in (1, 2))
    assert (one.paths, one.labels.tolist(), one.copies) == (two.paths, two.labels.tolist(), two.copies)
    assert len(one.copies) == 3


@pytest.mark.parametrize("stretches_per_process", [1, 16])  # copies within a stretch; every file its own
def test_the_groups_are_the_same_however_the_files_are_cut_into_stretches(tmp_path, stretches_per_process, monkeypatch):
    paths = []
    for index in [0, 0, 1, 2, 0, 3, 4, 5, 2, 6, 7, 7]:  # copies next to each other and far apart
        paths.append(tmp_path / f"{len(paths)}.{'bmp' if len(paths) % 2 else 'png'}")
        cell(index).save(paths[-1])
    reencoded(cell(5), 0.8).save(tmp_path / "near.jpg")
    paths.append(tmp_path / "near.jpg")
    monkeypatch.setattr(reading, "STRETCHES_PER_PROCESS", stretches_per_process)

    def groups(processes: int):
        found = reading.read_every_image(paths, processes)[1].groups(lambda i: Image.open(paths[i]).convert("RGB"))
        return [(group.members, group.identical) for group in found]

    expected = [([0, 1, 4], [[0, 1, 4]]), ([3, 8], [[3, 8]]), ([7, 12], [[7], [12]]), ([10, 11], [[10, 11]])]
    assert groups(1) == expected and groups(2) == expected


def test_a_bad_file_is_named_alike_by_one_process_and_by_two(tmp_path):
    root = write_set(tmp_path / "data")
    (root / "B" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    messages = []
    for count in (1, 2):
        with pytest.raises(DataError) as error:
            discover(root, processes=count)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "B/broken.png" in messages[0]


def test_a_large_set_is_read_in_one_process_per_cpu_but_in_one_inside_a_pools_worker(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(reading.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert (reading.reading_processes(reading.PARALLEL_FROM - 1), reading.reading_processes(5000)) == (1, 3)
    with multiprocessing.get_context("fork").Pool(1) as pool:  # its workers are daemonic
        assert pool.apply(reading.reading_processes, (5000,)) == 1
