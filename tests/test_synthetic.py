import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from spermfuse import synthetic
from spermfuse.core.errors import ConfigError
from spermfuse.data.folders import discover


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sperm18_has_exactly_the_papers_classes():
    assert synthetic.SPERM18_CLASSES == sorted(synthetic.SPERM18_CLASSES)
    assert len(synthetic.SPERM18_CLASSES) == 18 and "RounHead" in synthetic.SPERM18_CLASSES


def test_same_seed_writes_byte_identical_files(tmp_path):
    a = synthetic.generate(tmp_path / "a", "sperm18", seed=3, per_class=1)
    b = synthetic.generate(tmp_path / "b", "sperm18", seed=3, per_class=1)
    c = synthetic.generate(tmp_path / "c", "sperm18", seed=4, per_class=1)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_generated_set_is_an_image_folder_with_metadata(tmp_path):
    out = synthetic.generate(tmp_path / "s", "sperm18", per_class=2)
    samples = discover(out)
    assert samples.classes == synthetic.SPERM18_CLASSES
    assert samples.counts() == {name: 2 for name in synthetic.SPERM18_CLASSES}
    with open(out / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["path"] for r in rows} == set(samples.paths)
    row = next(r for r in rows if r["label"] == "ThinNeck")
    assert float(row["neck_thickness"]) < 0.13


@pytest.mark.parametrize("kind, size", [("hushem4", (131, 131)), ("blood4", (160, 160))])
def test_other_kinds_have_their_classes_and_sizes(tmp_path, kind, size):
    out = synthetic.generate(tmp_path / kind, kind, per_class=1)
    samples = discover(out)
    assert samples.classes == synthetic.KINDS[kind][0]
    assert Image.open(out / samples.paths[0]).size == size


def test_sperm18_crops_vary_in_size_and_look_like_bright_field():
    sizes, backgrounds = set(), []
    for i in range(6):
        image, _ = synthetic.render("sperm18", "Normal", 42, i)
        sizes.add(image.size)
        backgrounds.append(np.asarray(image)[0:4, 0:4].reshape(-1, 3).mean(0))
        assert 80 <= min(image.size) and max(image.size) <= 200
    assert len(sizes) > 1
    assert np.abs(np.mean(backgrounds, 0) - [204, 191, 183]).max() < 30


def test_default_counts_mirror_the_papers_imbalance():
    counts = synthetic.class_counts("sperm18")
    assert counts["VacuolatedHead"] == max(counts.values())
    assert {"DoubleHead", "LongTail", "ThinNeck"} == set(sorted(counts, key=counts.get)[:3])
    assert min(counts.values()) >= synthetic.MIN_PER_CLASS


def test_existing_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        synthetic.generate(tmp_path / "s", per_class=1)


def test_preview_writes_a_labelled_grid(tmp_path):
    path = synthetic.preview("blood4", tmp_path / "p.png", per_class=2, tile=40)
    image = Image.open(path)
    assert image.size == (120 + 2 * 40, 4 * 40)


def test_patients_are_in_file_names_and_metadata_and_share_a_look(tmp_path):
    out = synthetic.generate(tmp_path / "p", "sperm18", per_class=6, patients=4)
    samples = discover(out, group_pattern=r"patient(\d+)")
    with open(out / "metadata.csv") as handle:
        rows = {r["path"]: r["patient"] for r in csv.DictReader(handle)}
    assert [rows[p] for p in samples.paths] == list(samples.groups) and set(samples.groups) <= {
        "000",
        "001",
        "002",
        "003",
    }
    for c in range(len(samples.classes)):  # every class spans at least two patients
        assert len(set(samples.groups[samples.labels == c])) >= 2
    plain = synthetic.generate(tmp_path / "plain", "sperm18", per_class=6)
    for rel, group in zip(samples.paths, samples.groups):  # same drawing, the patient's stain cast on top
        look = synthetic.patient_looks(42, 4)[int(group)]
        original = Image.open(plain / rel.replace(f"_patient{group}", ""))
        assert np.array_equal(np.asarray(look.apply(original)), np.asarray(Image.open(out / rel)))


# Pixels of images 0 and 1 of every sperm18 class at seed 42, from generator v3 as it was
# before part masks existed (commit 9fb18cb): the masks must not change a single image.
SPERM18_V3_PIXELS_SHA256 = "438a6b82d56d7e4fa2accaa2cd038b83b463fb2f24983cd6bbe786eb6c3dbd4a"


def test_images_are_byte_identical_to_those_before_masks_existed():
    digest = hashlib.sha256()
    for label in synthetic.SPERM18_CLASSES:
        for index in range(2):
            image, _, _ = synthetic.render_with_mask(label, 42, index)
            digest.update(np.asarray(image).tobytes())
    assert digest.hexdigest() == SPERM18_V3_PIXELS_SHA256


def test_masks_are_written_beside_identical_images_and_named_in_the_metadata(tmp_path):
    plain = synthetic.generate(tmp_path / "plain", "sperm18", seed=3, per_class=2)
    masked = synthetic.generate(tmp_path / "masked", "sperm18", seed=3, per_class=2, masks=True)
    rows = list(csv.DictReader(open(masked / "metadata.csv")))
    assert (
        len(rows) == 36 and discover(masked).classes == synthetic.SPERM18_CLASSES
    )  # the hidden mask folder is no class
    for row in rows:
        assert (masked / row["path"]).read_bytes() == (plain / row["path"]).read_bytes()
        mask = np.asarray(Image.open(masked / row["mask"]))
        assert mask.shape == np.asarray(Image.open(masked / row["path"])).shape[:2]
        assert set(np.unique(mask)) <= {0, 1, 2, 3} and (mask == 1).any()  # every crop shows its head


def test_a_part_mask_covers_the_stained_sperm_not_the_background():
    image, _, mask = synthetic.render_with_mask("Normal", 42, 0)
    pixels, mask = np.asarray(image, dtype=np.float32).mean(2), np.asarray(mask)
    assert pixels[mask == 1].mean() < pixels[mask == 0].mean() - 40  # the dark head lies under the head label
    assert {1, 2, 3} <= set(np.unique(mask).tolist())


def test_masks_for_another_kind_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--masks: part masks exist for sperm18 only"):
        synthetic.generate(tmp_path / "b", "blood4", per_class=1, masks=True)


def test_every_class_has_the_part_that_carries_its_defect():
    assert set(synthetic.DEFECT_PART) == set(synthetic.SPERM18_CLASSES)
    assert set(synthetic.DEFECT_PART.values()) == {"head", "neck", "tail", "sperm"}
