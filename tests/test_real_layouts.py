"""What the public real sets look like on disk, without the data (docs/REAL_DATA.md): HuSHeM's
fold<k>/{train,test}/<class>/image_NNN.BMP with a few narrower images, and SMIDS's class folders
with spaces in their names, mixed .bmp/.png, and the same cell saved under two classes."""

import csv

from conftest import run_train
from PIL import Image

from spermfuse.core.transforms import build
from spermfuse.data.folders import discover
from spermfuse.data.images import load_rgb
from spermfuse.synthetic import render

HUSHEM_CLASSES = ["01_Normal", "02_Tapered", "03_Pyriform", "04_Amorphous"]
SMIDS_CLASSES = ["Acrosome Abnormality", "Boya", "Sperm"]
SPERM18_LOOKS = ["Normal", "TaperedHead", "PyriformHead", "AmorfHead"]


def head(index: int, look: str, size: tuple[int, int]) -> Image.Image:
    return render("sperm18", look, 3, index)[0].resize(size, Image.Resampling.BICUBIC)


def hushem_like(root):
    """Two official folds, each image tested in one; every fourth image 131 x 118 as in HuSHeM."""
    for fold in (1, 2):
        for part in ("train", "test"):
            for c, (name, look) in enumerate(zip(HUSHEM_CLASSES, SPERM18_LOOKS)):
                (root / f"fold{fold}" / part / name).mkdir(parents=True)
        for c, (name, look) in enumerate(zip(HUSHEM_CLASSES, SPERM18_LOOKS)):
            for i in range(6):
                index = 100 * c + i
                size = (131, 118) if i % 4 == 0 else (131, 131)
                tested = fold if i % 2 == 0 else 3 - fold
                part = "test" if tested == fold else "train"
                head(index, look, size).save(root / f"fold{fold}" / part / name / f"image_{index:03d}.BMP")
    return root


def test_hushem_layout_reads_each_image_once_with_its_official_fold(tmp_path):
    samples = discover(hushem_like(tmp_path / "HuSHeM"))
    assert samples.classes == HUSHEM_CLASSES and len(samples) == 24
    assert sorted(set(samples.folds.tolist())) == [1, 2] and len(set(samples.paths)) == 24


def test_a_narrower_bmp_is_letterboxed_to_the_model_size(tmp_path):
    samples = discover(hushem_like(tmp_path / "HuSHeM"))
    narrow = next(p for p in samples.absolute_paths if Image.open(p).size == (131, 118))
    tensor = build(train=False, img_size=64)(load_rgb(narrow))
    assert tuple(tensor.shape) == (3, 64, 64)


def smids_like(root, conflict: bool):
    """Three class folders (one with a space), .bmp and .png; a pixel-identical pair inside Boya
    ("X.bmp" and "X (1).bmp") and, with ``conflict``, one cell under two classes."""
    for c, name in enumerate(SMIDS_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(10):
            image = head(40 * c + i, SPERM18_LOOKS[c], (150 + i, 160))
            image.save(root / name / (f"{name} ({i}).png" if i % 2 else f"{name.split()[0]}_{i}.bmp"))
    Image.open(root / "Boya" / "Boya_0.bmp").save(root / "Boya" / "Boya_0 (1).bmp")
    if conflict:
        Image.open(root / "Sperm" / "Sperm_2.bmp").save(root / "Acrosome Abnormality" / "Normal_2896.png")
    return root


def train_fold_one(data, runs, *flags: str):
    return run_train(
        "--data",
        str(data),
        "--preset",
        "tiny",
        "--arch",
        "efficientnet_tiny",
        "--fold",
        "1",
        "--out",
        str(runs),
        *flags,
    )


def test_smids_like_data_stops_in_one_line_naming_the_cross_class_pair(tmp_path):
    data = smids_like(tmp_path / "SMIDS", conflict=True)
    result = train_fold_one(data, tmp_path / "runs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "the same image as" in line]
    assert "Normal_2896.png" in line and "Sperm_2.bmp" in line and "--duplicates drop-conflicts" in line
    assert not (tmp_path / "runs").exists()


def test_with_drop_conflicts_it_trains_and_no_duplicate_group_straddles_a_fold(tmp_path):
    data = smids_like(tmp_path / "SMIDS", conflict=True)
    runs = tmp_path / "runs"
    result = train_fold_one(data, runs, "--duplicates", "drop-conflicts")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(runs / "folds.csv", newline="") as handle:
        fold_of = {row["path"]: row["fold"] for row in csv.DictReader(handle)}
    assert "Acrosome Abnormality/Normal_2896.png" not in fold_of and "Sperm/Sperm_2.bmp" not in fold_of
    assert fold_of["Boya/Boya_0.bmp"] == fold_of["Boya/Boya_0 (1).bmp"]
    samples = discover(data, duplicates="drop-conflicts")
    assert samples.copies and all(
        fold_of[samples.paths[copy]] == fold_of[samples.paths[first]] for copy, first in samples.copies.items()
    )
    config = (runs / "efficientnet_tiny" / "fold1" / "config.json").read_text()
    assert '"duplicates": "drop-conflicts"' in config
