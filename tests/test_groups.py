"""Patient-disjoint splits: groups from a manifest or file names, group k-fold, the leakage check."""

import csv

import numpy as np
import pytest
from conftest import draw_cell

from spermfuse.core.errors import DataError
from spermfuse.data import splits
from spermfuse.data.folders import discover


def grouped_manifest(root, patients=6, per_patient=4, group_column="group"):
    """Two classes; each patient contributes images of both, each image named after its patient."""
    rows = []
    for p in range(patients):
        for i in range(per_patient):
            label = ("Big", "Small")[i % 2]
            rel = f"{label}/patient{p:02d}_{i}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            draw_cell((40, 36), 12 if label == "Big" else 6, seed=p * 10 + i).save(root / rel)
            rows.append([rel, label, f"P{p:02d}"])
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", group_column])
        writer.writerows(rows)
    return manifest


def test_manifest_groups_give_group_disjoint_stratified_folds(tmp_path):
    samples = discover(grouped_manifest(tmp_path))
    assert samples.groups is not None and len(set(samples.groups)) == 6
    folds = splits.make_folds(samples.labels, samples.classes, k=3, seed=1, groups=samples.groups)
    for group in set(samples.groups):
        assert len(set(folds[samples.groups == group])) == 1  # a patient is tested in one fold only
    for fold in (1, 2, 3):
        assert set(samples.labels[folds == fold]) == {0, 1}  # and every fold still holds both classes


def test_folds_csv_records_the_group_and_is_read_back(tmp_path):
    samples = discover(grouped_manifest(tmp_path))
    folds_csv = tmp_path / "runs" / "folds.csv"
    first = splits.load_or_create_folds(samples, folds_csv, k=3)
    with open(folds_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["group"] for r in rows] == list(samples.groups)
    assert np.array_equal(splits.load_or_create_folds(samples, folds_csv, k=3), first)


def test_without_groups_folds_csv_keeps_its_three_columns(image_folder, tmp_path):
    samples = discover(image_folder)
    folds = splits.make_folds(samples.labels, samples.classes, k=3)
    splits.write_folds(tmp_path / "folds.csv", samples, folds)
    plain = "path,label,fold\n" + "".join(
        f"{p},{samples.classes[y]},{f}\n" for p, y, f in zip(samples.paths, samples.labels, folds)
    )
    assert (tmp_path / "folds.csv").read_text() == plain  # the same bytes as before groups existed


def test_group_pattern_takes_groups_from_file_names(tmp_path):
    grouped_manifest(tmp_path)
    (tmp_path / "manifest.csv").unlink()
    samples = discover(tmp_path, group_pattern=r"patient(\d+)_")
    assert sorted(set(samples.groups)) == [f"{p:02d}" for p in range(6)]


def test_validation_and_test_take_whole_groups(tmp_path):
    samples = discover(grouped_manifest(tmp_path, patients=10))
    folds = splits.make_folds(samples.labels, samples.classes, k=5, groups=samples.groups)
    split = splits.fold_split(folds, samples.labels, fold=2, val_fraction=0.25, groups=samples.groups)
    parts = [set(samples.groups[idx]) for idx in (split.train, split.val, split.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    holdout = splits.holdout_split(samples.labels, 0.2, 0.2, groups=samples.groups)
    parts = [set(samples.groups[idx]) for idx in (holdout.train, holdout.val, holdout.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_a_leaking_split_is_an_error_naming_the_group():
    groups = np.array(["A", "A", "B", "C"])
    with pytest.raises(DataError, match="group 'A' is in both train and test"):
        splits.check_group_leakage(splits.Split(np.array([0, 2]), np.array([3]), np.array([1])), groups)


def test_an_empty_group_cell_is_one_clear_line(tmp_path):
    manifest = grouped_manifest(tmp_path)
    lines = manifest.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"manifest.csv:4: empty 'group'"):
        discover(manifest)


def test_another_group_column_name_is_used_when_named(tmp_path):
    manifest = grouped_manifest(tmp_path, group_column="patient")
    with pytest.raises(DataError, match="--group-column"):
        discover(manifest)
    assert len(set(discover(manifest, group_column="patient").groups)) == 6


def test_a_class_in_a_single_group_cannot_be_stratified(tmp_path):
    samples = discover(grouped_manifest(tmp_path))
    groups = samples.groups.copy()
    groups[samples.labels == 1] = "P00"  # every Small image from one patient
    with pytest.raises(DataError, match="class 'Small': all its images share one group"):
        splits.make_folds(samples.labels, samples.classes, k=3, groups=groups)


def test_more_folds_than_groups_is_refused(tmp_path):
    samples = discover(grouped_manifest(tmp_path, patients=3, per_patient=6))
    with pytest.raises(DataError, match="3 groups for 5 folds"):
        splits.make_folds(samples.labels, samples.classes, k=5, groups=samples.groups)


def test_a_pattern_that_finds_no_group_names_the_file(tmp_path):
    grouped_manifest(tmp_path)
    (tmp_path / "manifest.csv").unlink()
    with pytest.raises(DataError, match=r"Big/patient00_0.png: --group-pattern"):
        discover(tmp_path, group_pattern=r"slide(\d+)")


def test_training_with_patients_splits_by_patient_and_the_report_counts_them(tmp_path):
    import json

    from conftest import tiny_config

    import evaluate
    from spermfuse import synthetic
    from spermfuse.training import trainer

    data = synthetic.generate(tmp_path / "data", "sperm18", per_class=6, patients=4)
    for fold in (1, 2):
        run = trainer.train_fold(
            tiny_config(data, tmp_path / "runs", fold=fold, epochs=1, num_folds=2, group_pattern=r"patient(\d+)")
        )
    with open(tmp_path / "runs" / "folds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    fold_of_group = {}
    for row in rows:
        assert fold_of_group.setdefault(row["group"], row["fold"]) == row["fold"]  # a patient in one fold only
    assert json.loads((run / "config.json").read_text())["group_pattern"] == r"patient(\d+)"
    assert (
        evaluate.main(["--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"), "--no-figures"]) == 0
    )
    report = json.loads((tmp_path / "reports" / "evaluation" / "report.json").read_text())
    assert sum(counts["all"] for counts in report["groups_per_fold"].values()) == 4
    assert "Groups (patients" in (tmp_path / "reports" / "evaluation" / "report.md").read_text()
