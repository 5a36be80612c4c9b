"""The per-sample report (sample_report.py): samples from folders, merged groups, samples.csv, pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spermfuse.core.errors import DataError, FusionError
from spermfuse.core.quantify import QuantifyError, merge_classes
from spermfuse.deploy.sample_report import (
    HeldOutConfusion,
    Provenance,
    Sample,
    SampleSettings,
    check_sample_settings,
    estimate_samples,
    read_group_map,
    samples_table,
    split_samples,
    write_sample_pages,
)

CLASSES = ["Normal", "Pin", "Curly"]
GROUPS = {"Normal": "normal", "Pin": "head", "Curly": "tail"}


def held_out(confusion) -> HeldOutConfusion:
    return HeldOutConfusion(np.asarray(confusion, dtype=float), CLASSES, "test cells")


def probabilities_for(predicted: list[int]) -> np.ndarray:
    return np.eye(len(CLASSES))[predicted] * 0.8 + 0.2 / len(CLASSES)


def test_each_first_level_folder_is_a_sample_and_names_become_safe_file_names(tmp_path):
    images = [tmp_path / "p 1" / "a.png", tmp_path / "p 1" / "deep" / "b.png", tmp_path / "q<2>" / "c.png"]
    samples = split_samples(tmp_path, images)
    assert [(s.name, s.page, s.cells) for s in samples] == [
        ("p 1", "sample_p_1", [0, 1]),
        ("q<2>", "sample_q_2_", [2]),
    ]
    with pytest.raises(DataError, match="sample folders 'a b' and 'a_b' of .* differ only in characters"):
        split_samples(tmp_path, [tmp_path / "a b" / "x.png", tmp_path / "a_b" / "y.png"])


def sample_folders(root: Path, names: dict[str, list[str]]) -> list[Path]:
    """Sample folders holding the named files (small PNGs, or a few bytes of anything else); the images."""
    from PIL import Image

    images = []
    for folder, files in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".png"):
                Image.new("RGB", (8, 8)).save(root / folder / name)
                images.append(root / folder / name)
            else:
                (root / folder / name).write_bytes(b"GIF89a")
    return images


def test_an_empty_sample_folder_is_refused_not_dropped(tmp_path):
    images = sample_folders(tmp_path, {"p1": ["a.png"], "empty": []})
    with pytest.raises(DataError, match="empty holds no usable image, so that sample would have no row"):
        split_samples(tmp_path, images)


def test_a_sample_folder_that_links_elsewhere_is_refused_not_dropped(tmp_path):
    images = sample_folders(tmp_path / "samples", {"p1": ["a.png"]})
    sample_folders(tmp_path / "outside", {"cells": ["b.png"]})
    (tmp_path / "samples" / "linked").symlink_to(tmp_path / "outside" / "cells")
    with pytest.raises(DataError, match="linked is a link to a folder, whose images are not read"):
        split_samples(tmp_path / "samples", images)


def test_files_of_an_unsupported_type_are_named_in_their_samples_warnings(tmp_path):
    images = sample_folders(tmp_path, {"p1": ["a.png", "anim.gif", "notes.txt"], "p2": ["b.png"]})
    first, second = split_samples(tmp_path, images)
    assert first.warnings == [
        "2 file(s) not read, not a supported image type (.bmp, .jpeg, .jpg, .png, .tif, .tiff): p1/anim.gif, p1/notes.txt"
    ]
    assert second.warnings == []


def test_merging_classes_sums_their_rows_and_columns():
    confusion = np.array([[5, 3, 2], [4, 4, 2], [1, 1, 8]])
    assert merge_classes(confusion, [0, 0, 1], 2).tolist() == [[16, 4], [2, 8]]


def test_groups_too_alike_as_classes_are_estimated_on_their_merged_confusion():
    confusion = [[20, 20, 0], [21, 19, 0], [0, 2, 38]]  # Normal and Pin: one class to this classifier
    settings = SampleSettings(groups={"Normal": "head or normal", "Pin": "head or normal", "Curly": "tail"})
    with pytest.raises(QuantifyError, match="cannot tell Normal from Pin"):
        check_sample_settings(settings, held_out(confusion))
    settings.estimate_on = "groups"
    check_sample_settings(settings, held_out(confusion))
    samples = [Sample("a", "sample_a", list(range(10)))]
    estimate_samples(samples, probabilities_for([0] * 6 + [2] * 4), held_out(confusion), settings)
    assert samples[0].estimate.classes == ["head or normal", "tail"]
    assert samples[0].counted.tolist() == [6, 4]
    assert settings.normal_name == "head or normal"


def test_estimating_on_groups_needs_a_group_map():
    with pytest.raises(DataError, match="--estimate-on groups: needs the groups"):
        check_sample_settings(SampleSettings(estimate_on="groups"), held_out(np.eye(3) * 10))


def test_the_table_flags_each_sample_on_its_own_interval():
    settings = SampleSettings(groups=GROUPS, n_boot=300)
    confusion = np.eye(3) * 100
    samples = [Sample("none", "sample_none", list(range(0, 300))), Sample("many", "sample_many", list(range(300, 600)))]
    predicted = [1] * 150 + [2] * 150 + [0] * 150 + [1] * 150  # sample 1: no normal forms; sample 2: half
    estimate_samples(samples, probabilities_for(predicted), held_out(confusion), settings)
    header, rows = samples_table(samples, settings)
    flags = [row[header.index("normal_forms_flag")] for row in rows]
    assert flags == ["below", "above"]
    assert [row[header.index("warning")] for row in rows] == ["", ""]  # 300 cells: WHO's minimum is met
    assert "head_percent" in header and "tail_high" in header


def test_a_group_map_file_must_be_one_object_of_names(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text('["Normal", "head"]')
    with pytest.raises(DataError, match="one JSON object of class → group"):
        read_group_map(path)
    path.write_text('{"Normal": "normal", "Pin": "head"}')
    assert read_group_map(path) == {"Normal": "normal", "Pin": "head"}


def test_a_page_escapes_the_sample_name_and_states_its_provenance(tmp_path):
    from PIL import Image

    images = []
    for i in range(4):
        path = tmp_path / "cells" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (i * 40, 90, 120)).save(path)
        images.append(path)
    (tmp_path / "fusion.json").write_text("{}")
    settings = SampleSettings(groups=GROUPS, n_boot=50)
    samples = [Sample("<b>x</b>", "sample__b_x__b_", [0, 1, 2, 3])]
    probabilities = probabilities_for([0, 1, 2, 2])
    estimate_samples(samples, probabilities, held_out(np.eye(3) * 50), settings)
    provenance = Provenance(["m1", "m2"], 3, tmp_path / "fusion.json", "fold 3's 150 held-out test cells")
    write_sample_pages(tmp_path / "out", samples, images, probabilities, CLASSES, settings, provenance)
    page = (tmp_path / "out" / "sample__b_x__b_.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "fold 3&#x27;s 150 held-out test cells" in page and "fewer than the 200 WHO asks for" in page
    markdown = Path(tmp_path / "out" / "sample__b_x__b_.md").read_text()
    assert "Normal: 25.0 %" in markdown


def test_em_recalibrates_on_the_held_out_logits_before_adjusting():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 60)
    logits = rng.normal(size=(180, 3)) + 2.5 * np.eye(3)[labels]
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (labels, logits.argmax(axis=1)), 1)
    settings = SampleSettings(method="em", n_boot=100)
    samples = [Sample("a", "sample_a", list(range(100)))]
    cells = rng.normal(size=(100, 3)) + 2.5 * np.eye(3)[np.r_[np.zeros(10, int), np.ones(90, int)]]
    probabilities = np.exp(cells) / np.exp(cells).sum(axis=1, keepdims=True)
    estimate_samples(samples, probabilities, HeldOutConfusion(confusion, CLASSES, "test", logits, labels), settings)
    value, low, high = samples[0].estimate.of("Normal")
    assert low <= 0.10 <= high and samples[0].estimate.method == "em"


@pytest.mark.parametrize("method", ["em", "pcc"])
def test_held_out_cells_that_are_all_right_cannot_recalibrate_and_stop_the_samples_in_one_line(method):
    labels = np.repeat(np.arange(3), 8)
    logits = 25.0 * np.eye(3)[labels]  # a small, easy held-out set: every cell right by a margin of 25
    confusion = np.diag(np.bincount(labels)).astype(float)
    samples = [Sample("a", "sample_a", list(range(10)))]
    with pytest.raises(FusionError, match=f"--samples --method {method}: the held-out cells' calibration: all 24"):
        estimate_samples(
            samples,
            probabilities_for([0] * 10),
            HeldOutConfusion(confusion, CLASSES, "test", logits, labels),
            SampleSettings(method=method),
        )


def test_the_average_of_the_folds_gets_a_confusion_from_a_shared_calibration_holdout(tmp_path):
    from conftest import write_calibration_logits

    from spermfuse.core.metrics import confusion_counts
    from spermfuse.deploy.sample_report import average_held_out_confusion
    from spermfuse.store import fusion_folder

    write_calibration_logits(tmp_path, folds=3, n=90, shared=True, seed=3, noise=1.5)
    weights = [[0.5, 0.5], [0.3, 0.7], [0.6, 0.4]]
    held = average_held_out_confusion(tmp_path, ["modelx", "modely"], [1, 2, 3], weights)
    fused = fusion_folder.fused_folds(tmp_path, ["modelx", "modely"], [1, 2, 3], weights, "cal")
    ordered = [f.logits[np.argsort(f.paths)] for f in fused]
    labels = fused[0].labels[np.argsort(fused[0].paths)]
    expected = confusion_counts(labels, np.mean(ordered, axis=0).argmax(axis=1), 3)
    assert np.array_equal(held.confusion, expected) and held.split == "cal" and held.confusion.sum() == 90
    write_calibration_logits(tmp_path / "per_fold", folds=3, n=90, seed=3, noise=1.5)
    assert average_held_out_confusion(tmp_path / "per_fold", ["modelx", "modely"], [1, 2, 3], weights) is None


def test_a_bad_sample_level_is_refused_with_the_other_flags_naming_it():
    confusion = np.eye(3) * 50  # a confusion acc accepts, so the level is the only fault
    with pytest.raises(DataError, match=r"--sample-level 1.5: give the intervals' level in \(0, 1\)"):
        check_sample_settings(SampleSettings(level=1.5), held_out(confusion))


def test_classes_too_alike_on_groups_already_get_advice_other_than_the_flag_given():
    confusion = np.array([[10, 10, 0], [10, 10, 0], [0, 0, 20]], dtype=float)  # Normal and Pin predicted alike
    settings = SampleSettings(estimate_on="groups")
    settings.groups = {"Normal": "normal", "Pin": "head", "Curly": "tail"}
    with pytest.raises(
        QuantifyError, match="give a --sample-groups that joins them into one group, or --sample-method em"
    ):
        check_sample_settings(settings, held_out(confusion))
