"""The run folder (run_folder.py): logits files joined on paths, fusion.json as FusionSettings,
the run root found, and the weights prediction fuses each fold with."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, fake_runs, fuse_fake_pair, run_script, write_logits

from spermfuse.core import fusion
from spermfuse.core.files import CheckpointError
from spermfuse.core.logits import align, load_logits
from spermfuse.store import fusion_folder, run_folder


def test_align_joins_on_paths_whatever_the_order(tmp_path):
    write_logits(tmp_path / "a.npz", [[1, 0, 0], [0, 1, 0]], [0, 1], ["x", "y"], "a", 1)
    write_logits(tmp_path / "b.npz", [[0, 2, 0], [2, 0, 0]], [1, 0], ["y", "x"], "b", 1)
    a, b = align([load_logits(tmp_path / "a.npz"), load_logits(tmp_path / "b.npz")])
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
        align([load_logits(tmp_path / "a.npz"), load_logits(tmp_path / "b.npz")])


def test_nan_logits_are_refused(tmp_path):
    write_logits(tmp_path / "a.npz", [[np.nan, 0, 0]], [0], ["x"], "a", 1)
    with pytest.raises(fusion.FusionError, match="NaN"):
        load_logits(tmp_path / "a.npz")


def test_prediction_fuses_each_fold_with_its_own_weights_and_temperatures():
    settings = fusion_folder.FusionSettings(
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
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert settings.to_json() == written and settings.version == fusion_folder.FUSION_SETTINGS_VERSION
    assert settings.temperatures and settings.referral and settings.sets and settings.selection_comparison
    with pytest.raises(run_folder.FusionError, match="unknown keys extra"):
        fusion_folder.FusionSettings.from_json(written | {"extra": 1})
    with pytest.raises(run_folder.FusionError, match="version 0"):
        fusion_folder.FusionSettings.from_json(written | {"version": 0})


def test_the_folds_of_a_fold_flag_are_those_fused_or_refused():
    settings = fusion_folder.FusionSettings(["a", "b"], [1, 2, 3], [[0.5, 0.5]] * 3, "grid", "val", "0:1:0.1")
    assert settings.chosen_folds("all") == [1, 2, 3] and settings.chosen_folds("2") == [2]
    for text in ("4", "two", "-1"):
        with pytest.raises(run_folder.FusionError, match=f"--fold {text}: fusion.json has folds"):
            settings.chosen_folds(text)


def test_without_runs_the_most_recent_run_root_under_runs_is_used_and_named(tmp_path, monkeypatch, caplog):
    import logging
    import os

    from spermfuse.store.run_folder import find_run_root

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


@pytest.mark.parametrize("given", ["missing", "a_file.txt"])
def test_a_runs_flag_that_is_not_a_folder_is_refused_naming_the_flag(tmp_path, given):
    from spermfuse.store.run_folder import find_run_root

    (tmp_path / "a_file.txt").write_text("not a run root")
    with pytest.raises(fusion.FusionError, match=f"--runs .*{given}: no such folder; give the run root"):
        find_run_root(tmp_path / given)


def fused_fake_pair(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid", "--select", "val").returncode == 0
    return runs, json.loads((runs / "fusion" / "fusion.json").read_text())


def rewrite_fusion_json(runs, settings: dict) -> None:
    """Edit fusion.json on purpose, as GUARANTEES.md says: the manifest rewritten with it."""
    from spermfuse.store.output_folder import write_manifest

    (runs / "fusion" / "fusion.json").write_text(json.dumps(settings))
    write_manifest(runs / "fusion")


def test_deleting_the_manifest_after_editing_fusion_json_is_refused(tmp_path):
    runs, settings = fused_fake_pair(tmp_path)
    settings["weights_per_fold"][0] = [5.0, -4.0]
    (runs / "fusion" / "fusion.json").write_text(json.dumps(settings))
    (runs / "fusion" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="has no manifest.json, so its files cannot be checked"):
        fusion_folder.read_fusion_settings(runs / "fusion")
    with pytest.raises(CheckpointError, match="has no manifest.json"):  # its logits are not read unchecked either
        run_folder.load_fold_sets(runs / "fusion")
    from PIL import Image

    (tmp_path / "new").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "new" / "cell.png")
    result = run_script("fuse.py", "--predict", str(tmp_path / "new"), "--fold", "1", "--runs", str(runs))
    assert result.returncode == 2 and "has no manifest.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "weights,why", [([5.0, -4.0], "not a mix"), ([float("nan"), 0.6], "not a mix"), ([0.4, 0.5], "not a mix")]
)
def test_weights_that_are_not_a_mix_are_refused_even_with_a_rewritten_manifest(tmp_path, weights, why):
    runs, settings = fused_fake_pair(tmp_path)
    settings["weights_per_fold"][0] = weights
    rewrite_fusion_json(runs, settings)
    with pytest.raises(run_folder.FusionError, match=why):
        fusion_folder.read_fusion_settings(runs / "fusion")


def test_swapped_models_are_refused_by_the_inputs_they_were_fused_from(tmp_path):
    runs, settings = fused_fake_pair(tmp_path)
    settings["models"] = settings["models"][::-1]
    rewrite_fusion_json(runs, settings)
    with pytest.raises(run_folder.FusionError, match="are not the ones its inputs were fused from"):
        fusion_folder.read_fusion_settings(runs / "fusion")


def test_a_temperature_that_is_not_positive_is_refused(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid", "--select", "val", "--calibrate").returncode == 0
    settings = json.loads((runs / "fusion" / "fusion.json").read_text())
    settings["temperatures"]["per_fold"][0][0] = -1.0
    rewrite_fusion_json(runs, settings)
    with pytest.raises(run_folder.FusionError, match="temperatures.per_fold must be finite and > 0"):
        fusion_folder.read_fusion_settings(runs / "fusion")


def test_a_fold_retrained_or_left_unfinished_after_fusing_is_refused_by_evaluate_and_predict(tmp_path):
    """An --overwrite run of fold 1 killed before it wrote its logits (the old run moved aside), or
    finished since: the fusion's weights and promises are about the old models (review B2)."""
    from PIL import Image

    runs, _ = fused_fake_pair(tmp_path)
    (tmp_path / "new").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "new" / "cell.png")
    logits = runs / "modelx" / "fold1" / "test_logits.npz"
    original = logits.read_bytes()
    logits.unlink()  # unfinished
    predict = ("fuse.py", "--predict", str(tmp_path / "new"), "--fold", "1", "--runs", str(runs))
    evaluate = ("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"))
    for command in (predict, evaluate):
        expected = "modelx/fold1/test_logits.npz: missing, but the fusion was made from it"
        result = run_script(*command)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    logits.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # retrained: other bytes
    with pytest.raises(fusion.FusionError, match="changed since the fusion was made from it"):
        fusion_folder.read_fusion_settings(runs / "fusion").check_inputs(runs)
    logits.write_bytes(original)
    fusion_folder.read_fusion_settings(runs / "fusion").check_inputs(runs)  # as fused: accepted
    assert not (tmp_path / "r").exists()
