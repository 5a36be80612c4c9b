"""The run folder (run_folder.py): logits files joined on paths, fusion.json as FusionSettings,
the run root found, and the weights prediction fuses each fold with."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, fake_runs, fuse_fake_pair, write_logits

from spermfuse import fusion, run_folder


def test_align_joins_on_paths_whatever_the_order(tmp_path):
    write_logits(tmp_path / "a.npz", [[1, 0, 0], [0, 1, 0]], [0, 1], ["x", "y"], "a", 1)
    write_logits(tmp_path / "b.npz", [[0, 2, 0], [2, 0, 0]], [1, 0], ["y", "x"], "b", 1)
    a, b = run_folder.align([run_folder.load_logits(tmp_path / "a.npz"), run_folder.load_logits(tmp_path / "b.npz")])
    assert list(b.paths) == ["x", "y"] and b.logits[0, 0] == 2


@pytest.mark.parametrize(
    "other, message",
    [
        (dict(classes=["A", "B", "D"]), "classes differ"),
        (dict(paths=["x", "z"]), "other samples"),
        (dict(labels=[0, 0]), "labels differ"),
    ],
)
def test_align_refuses_sets_that_do_not_match(tmp_path, other, message):
    write_logits(tmp_path / "a.npz", [[1, 0, 0], [0, 1, 0]], [0, 1], ["x", "y"], "a", 1)
    settings = (
        dict(logits=[[1, 0, 0], [0, 1, 0]], labels=[0, 1], paths=["x", "y"], arch="b", fold=1, classes=CLASSES) | other
    )
    write_logits(tmp_path / "b.npz", **settings)
    with pytest.raises(fusion.FusionError, match=message):
        run_folder.align([run_folder.load_logits(tmp_path / "a.npz"), run_folder.load_logits(tmp_path / "b.npz")])


def test_nan_logits_are_refused(tmp_path):
    write_logits(tmp_path / "a.npz", [[np.nan, 0, 0]], [0], ["x"], "a", 1)
    with pytest.raises(fusion.FusionError, match="NaN"):
        run_folder.load_logits(tmp_path / "a.npz")


def test_prediction_fuses_each_fold_with_its_own_weights_and_temperatures():
    settings = run_folder.FusionSettings(
        ["x", "y"], [1, 2], [[0.2, 0.8], [0.6, 0.4]], rule="val", select="val", alphas="0:1:0.1"
    )
    assert settings.prediction_weights([2]) == [[0.6, 0.4]]  # fold 2's own, not the mean of the folds
    settings.temperatures = {"per_fold": [[1.0, 2.0], [2.0, 0.5]]}
    assert settings.prediction_weights([1, 2]) == [[0.2, 0.4], [0.3, 0.8]]
    assert settings.prediction_threshold([1, 2]) is None


def test_fusion_json_round_trips_through_fusion_settings(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert (
        fuse_fake_pair(
            runs, "--grid", "--select", "val", "--calibrate", "--refer-accuracy", "0.5", "--sets-alpha", "0.2"
        ).returncode
        == 0
    )
    written = json.loads((runs / "fusion" / "fusion.json").read_text())
    settings = run_folder.read_fusion_settings(runs / "fusion")
    assert settings.to_json() == written and settings.version == run_folder.FUSION_SETTINGS_VERSION
    assert settings.temperatures and settings.referral and settings.sets and settings.selection_comparison
    with pytest.raises(run_folder.FusionError, match="unknown keys extra"):
        run_folder.FusionSettings.from_json(written | {"extra": 1})
    with pytest.raises(run_folder.FusionError, match="version 0"):
        run_folder.FusionSettings.from_json(written | {"version": 0})


def test_the_folds_of_a_fold_flag_are_those_fused_or_refused():
    settings = run_folder.FusionSettings(["a", "b"], [1, 2, 3], [[0.5, 0.5]] * 3, "grid", "val", "0:1:0.1")
    assert settings.chosen_folds("all") == [1, 2, 3] and settings.chosen_folds("2") == [2]
    for text in ("4", "two", "-1"):
        with pytest.raises(run_folder.FusionError, match=f"--fold {text}: fusion.json has folds"):
            settings.chosen_folds(text)


def test_without_runs_the_most_recent_run_root_under_runs_is_used_and_named(tmp_path, monkeypatch, caplog):
    import logging
    import os

    from spermfuse.run_folder import find_run_root

    monkeypatch.chdir(tmp_path)
    with pytest.raises(fusion.FusionError, match="no trained models in runs/ or its subfolders"):
        find_run_root(None)
    older = fake_runs(tmp_path / "runs" / "demo")
    fake_runs(tmp_path / "runs" / "tiny")  # written now: the newer root
    for logits in older.rglob("*.npz"):
        os.utime(logits, (1_000_000, 1_000_000))
    with caplog.at_level(logging.INFO):
        assert find_run_root(None) == Path("runs") / "tiny"
    assert "the most recent of runs/demo, runs/tiny" in caplog.text
    assert find_run_root(older) == older  # given: used as it is
