import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from spermfuse.core.errors import DataError
from spermfuse.core.transforms import build
from spermfuse.data import images, loaders, splits
from spermfuse.data.folders import discover


def test_image_folder_classes_are_sorted_and_labels_match(image_folder):
    samples = discover(image_folder)
    assert samples.classes == ["Big", "Small"]
    assert samples.counts() == {"Big": 6, "Small": 5}
    for path, label in zip(samples.paths, samples.labels):
        assert path.startswith(samples.classes[label] + "/")
    assert samples.folds is None


def test_extensions_are_matched_in_any_case(image_folder):
    shutil.copy(image_folder / "Big" / "big_0.png", image_folder / "Big" / "extra.PNG")
    (image_folder / "Big" / "notes.txt").write_text("not an image")
    assert discover(image_folder).counts()["Big"] == 7


def test_official_fold_layout_reads_test_folders(image_folder, tmp_path):
    root = tmp_path / "official"
    samples = discover(image_folder)
    for i, rel in enumerate(samples.paths):
        fold = i % 2 + 1
        for k in (1, 2):
            part = "test" if k == fold else "train"
            target = root / f"fold{k}" / part / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image_folder / rel, target)
    official = discover(root)
    assert official.classes == ["Big", "Small"]
    assert len(official) == len(samples)
    assert sorted(set(official.folds.tolist())) == [1, 2]
    assert all(p.startswith(f"fold{f}/test/") for p, f in zip(official.paths, official.folds))


def test_csv_manifest_with_folds(image_folder):
    manifest = image_folder / "manifest.csv"
    samples = discover(image_folder)
    rows = [f"{p},{samples.classes[y]},{i % 3 + 1}" for i, (p, y) in enumerate(zip(samples.paths, samples.labels))]
    manifest.write_text("path,label,fold\n" + "\n".join(rows) + "\n")
    from_csv = discover(manifest)
    assert from_csv.paths == samples.paths and from_csv.folds.tolist() == [i % 3 + 1 for i in range(len(rows))]


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,label\nBig/big_0.png,Big\n", "columns must be path,label"),
        ("path,label\nBig/missing.png,Big\n", "not found"),
    ],
)
def test_bad_manifest_names_the_file(image_folder, content, message):
    manifest = image_folder / "bad.csv"
    manifest.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        discover(manifest)
    assert "bad.csv" in str(info.value)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="no images"):
        discover(tmp_path)


def test_class_folder_without_images_is_refused(image_folder):
    (image_folder / "Empty").mkdir()
    with pytest.raises(DataError, match="Empty.*no images"):
        discover(image_folder)


@pytest.mark.parametrize("content", [b"", b"this is not a png", None])
def test_bad_image_file_is_named_or_skipped(image_folder, content):
    bad = image_folder / "Big" / "bad.png"
    if content is None:  # truncated
        full = (image_folder / "Big" / "big_0.png").read_bytes()
        bad.write_bytes(full[: len(full) // 2])
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match="bad.png"):
        discover(image_folder)
    samples = discover(image_folder, on_error="skip")
    assert [p for p, _ in samples.skipped] == ["Big/bad.png"]
    assert "Big/bad.png" not in samples.paths


def test_folds_are_stratified_and_reproducible(image_folder):
    samples = discover(image_folder)
    a = splits.make_folds(samples.labels, samples.classes, k=5, seed=42)
    b = splits.make_folds(samples.labels, samples.classes, k=5, seed=42)
    assert np.array_equal(a, b)
    assert sorted(set(a.tolist())) == [1, 2, 3, 4, 5]
    per_fold = np.array([np.bincount(samples.labels[a == fold], minlength=2) for fold in range(1, 6)])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all()  # each class spread equally, to one image
    assert (per_fold.sum(axis=0) == np.bincount(samples.labels)).all()


def test_class_smaller_than_fold_count_is_refused(image_folder):
    samples = discover(image_folder)
    with pytest.raises(DataError, match="Small.*fewer than the 6 folds"):
        splits.make_folds(samples.labels, samples.classes, k=6)


def test_folds_csv_is_written_once_and_reused(image_folder, tmp_path):
    samples = discover(image_folder)
    folds_csv = tmp_path / "runs" / "folds.csv"
    first = splits.load_or_create_folds(samples, folds_csv, k=5, seed=42)
    written = folds_csv.read_text()
    second = splits.load_or_create_folds(samples, folds_csv, k=5, seed=7)  # seed ignored: file wins
    assert np.array_equal(first, second) and folds_csv.read_text() == written


def test_folds_csv_keeps_commas_and_quotes_in_file_names(image_folder, tmp_path):
    (image_folder / "Big" / "big_0.png").rename(image_folder / "Big" / "a,1.png")
    (image_folder / "Small" / "small_0.png").rename(image_folder / "Small" / 'say "hi".png')
    samples = discover(image_folder)
    folds_csv = tmp_path / "folds.csv"
    first = splits.load_or_create_folds(samples, folds_csv, k=3)
    again = splits.load_or_create_folds(samples, folds_csv, k=3)  # read back: the same samples, no error
    assert np.array_equal(first, again)
    with open(folds_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    assert all(len(row) == 3 for row in rows) and ["Big/a,1.png", "Big"] in [row[:2] for row in rows]


def test_validation_subset_comes_from_training_part_only(image_folder):
    samples = discover(image_folder)
    folds = splits.make_folds(samples.labels, samples.classes, k=5)
    split = splits.fold_split(folds, samples.labels, fold=2, val_fraction=0.2)
    assert set(split.test) == set(np.flatnonzero(folds == 2))
    assert not set(split.val) & set(split.test) and not set(split.train) & set(split.val)
    assert len(split.train) + len(split.val) + len(split.test) == len(samples)
    assert set(samples.labels[split.val]) == {0, 1}  # stratified: every class validated on


def test_holdout_split_is_70_15_15_and_stratified():
    labels = np.repeat(np.arange(4), 100)
    split = splits.holdout_split(labels)
    assert (len(split.train), len(split.val), len(split.test)) == (280, 60, 60)
    assert np.bincount(labels[split.test]).tolist() == [15] * 4


def test_class_weights_are_n_over_c_times_count():
    weights = loaders.class_weights(np.array([0, 0, 0, 1]), 2)
    assert torch.allclose(weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_load_rgb_converts_every_mode_to_8bit_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16)).save(path)
    else:
        Image.new("RGB", (8, 6), (255, 255, 255)).convert(mode).save(path)
    image = images.load_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.asarray(image).min() >= 250  # white stays white, 16-bit is rescaled not clipped


def test_load_rgb_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert images.load_rgb(path).size == (4, 8)


def test_dataset_items_are_deterministic_per_epoch_and_index(image_folder):
    samples = discover(image_folder)
    dataset = loaders.ImageDataset(samples, np.arange(len(samples)), build(True, 32), seed=1)
    x1, y1, i1 = dataset[(3, 0)]
    x2, _, _ = dataset[(3, 0)]
    x3, _, _ = dataset[(3, 1)]
    assert torch.equal(x1, x2) and i1 == 3 and y1 == samples.labels[3]
    assert x1.shape == (3, 32, 32)
    assert not torch.equal(x1, x3)  # rotation is drawn anew each epoch


def test_loader_order_and_augmentation_do_not_depend_on_workers(image_folder):
    samples = discover(image_folder)
    dataset = loaders.ImageDataset(samples, np.arange(len(samples)), build(True, 32), seed=5)

    def one_epoch(workers, epoch):
        loader = loaders.make_loader(dataset, 4, train=True, seed=5, num_workers=workers)
        loader.sampler.set_epoch(epoch)
        return [(x, idx) for x, _, idx in loader]

    serial, parallel = one_epoch(0, 1), one_epoch(2, 1)
    for (xa, ia), (xb, ib) in zip(serial, parallel):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    other_epoch = one_epoch(0, 2)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(serial, other_epoch))


def test_a_zero_fraction_gives_an_empty_subset():
    labels = np.repeat(np.arange(3), 10)
    rest, subset = splits.stratified_subset(np.arange(30), labels, 0.0, seed=1)
    assert len(subset) == 0 and len(rest) == 30


def test_a_train_and_test_layout_is_named_not_read_as_two_classes(tmp_path):
    from spermfuse.core.errors import DataError
    from spermfuse.data.folders import discover

    for split in ("train", "test"):
        (tmp_path / split / "Normal").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / split / "Normal" / "a.png")
    with pytest.raises(DataError, match=r"holds test, train/ split folders, not classes.*fold1/train/<Class>/"):
        discover(tmp_path)


def test_samples_give_absolute_paths_too(image_folder):
    from spermfuse.data.folders import discover

    samples = discover(image_folder)
    assert all(p.is_file() and p.is_absolute() == image_folder.is_absolute() for p in samples.absolute_paths)
    assert samples.absolute_paths[0] == samples.root / samples.paths[0]


def test_a_single_class_data_set_is_refused(tmp_path):
    from spermfuse.core.errors import DataError
    from spermfuse.data.folders import discover

    (tmp_path / "Normal").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (i, 0, 0)).save(tmp_path / "Normal" / f"{i}.png")
    with pytest.raises(DataError, match="one class \\(Normal\\); a classifier needs two or more"):
        discover(tmp_path)
