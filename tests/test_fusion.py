"""Fusion (fusion.py, fuse.py --grid): the weighted sum, the grid and the selection rules, the
temperatures, and the promises (certified referral, prediction sets, the calibration holdout)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import CLASSES, fake_runs, fuse_fake_pair, run_script, write_calibration_logits, write_logits

from spermfuse.core import calibration, fusion
from spermfuse.core.logits import LogitsSet, load_logits
from spermfuse.selection import choice, promises
from spermfuse.store import fusion_folder, run_folder


def shuffle_test_labels(runs, seed=1):
    """Permute the test labels of every fold, identically for both models (what a leak would feed on)."""
    rng = np.random.default_rng(seed)
    for k in range(1, 6):
        order = None
        for arch in ("modelx", "modely"):
            path = runs / arch / f"fold{k}" / "test_logits.npz"
            with np.load(path, allow_pickle=False) as f:
                arrays = {key: f[key] for key in f.files}
            by_path = dict(zip(arrays["paths"], arrays["labels"]))
            if order is None:
                names = sorted(by_path)
                order = dict(zip(names, rng.permutation([by_path[n] for n in names])))
            arrays["labels"] = np.array([order[p] for p in arrays["paths"]], dtype=np.int64)
            np.savez(path, **arrays)


def test_fuse_is_the_weighted_sum_of_logits():
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    assert np.allclose(fusion.fuse([a, b], [0.25, 0.75]), 0.25 * a + 0.75 * b)


def test_grid_search_picks_the_better_model_and_breaks_ties_toward_half(tmp_path):
    labels = np.array([0, 1, 2, 0])
    good = LogitsSet(np.eye(3)[labels] * 5, labels, np.array(list("abcd")), CLASSES, "good", 1)
    bad = LogitsSet(np.eye(3)[[1, 2, 0, 1]] * 5.0, labels, np.array(list("abcd")), CLASSES, "bad", 1)
    result = fusion.grid_search([[good, bad]], [i / 10 for i in range(11)])
    assert result.best[0] > 0.5
    same = fusion.grid_search([[good, good]], [i / 10 for i in range(11)])
    assert same.best == (0.5, 0.5)


def test_simplex_grid_for_three_models_sums_to_one():
    grid = fusion.simplex_grid(3, [0.0, 0.5, 1.0])
    assert len(grid) == 6 and all(abs(sum(w) - 1) < 1e-9 for w in grid)


def test_simplex_grid_uses_every_given_weight_of_an_uneven_grid():
    alphas = [0.0, 0.3, 0.7, 1.0]
    grid = fusion.simplex_grid(3, alphas)
    assert (0.3, 0.7, 0.0) in grid and (0.0, 0.3, 0.7) in grid and (1.0, 0.0, 0.0) in grid
    assert all(w in alphas for vector in grid for w in vector) and all(abs(sum(v) - 1) < 1e-9 for v in grid)


def test_a_single_weight_for_three_models_is_one_clear_error():
    with pytest.raises(fusion.FusionError, match="--alphas 0.5: no 3 of these weights sum to 1"):
        fusion.simplex_grid(3, [0.5])


def test_nested_selection_never_looks_at_its_own_fold():
    result = fusion.GridResult(
        [(0.0, 1.0), (1.0, 0.0)], [1, 2, 3], np.zeros((2, 3)), np.array([[0.9, 0.1, 0.1], [0.1, 0.5, 0.5]]), (0.0, 1.0)
    )
    assert fusion.nested_selection(result) == [(1.0, 0.0), (0.0, 1.0), (0.0, 1.0)]


def test_fuse_grid_writes_table_weights_and_fused_logits(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = fuse_fake_pair(runs, "--grid", "--select", "nested")
    assert result.returncode == 0, result.stderr
    out = runs / "fusion"
    grid = (out / "grid.csv").read_text().splitlines()
    assert grid[0].startswith("a,fold1_acc,fold1_f1w") and len(grid) == 12
    settings = json.loads((out / "fusion.json").read_text())
    assert {"test", "nested", "val"} <= set(settings["selection_comparison"])
    assert len(settings["weights_per_fold"]) == 5
    fused = load_logits(out / "fold3" / "test_logits.npz")
    assert fused.arch == "fusion" and fused.fold == 3
    assert "nested" in result.stderr and "optimistic" in result.stderr


def test_fuse_refuses_a_missing_fold(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    (runs / "modely" / "fold4" / "test_logits.npz").unlink()
    result = fuse_fake_pair(runs, "--grid")
    assert result.returncode == 2 and "fold(s) [4] missing" in result.stderr


@pytest.mark.parametrize(
    "device, message", [("gpu0", "--device gpu0: not a device"), ("cuda", "--device cuda: no CUDA device")]
)
def test_prediction_on_a_missing_device_gets_one_clear_line(tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = run_script("fuse.py", "--predict", str(tmp_path), "--runs", str(tmp_path), "--device", device)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1


def test_calibrated_fusion_fits_each_temperature_on_validation_logits_only(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert fuse_fake_pair(runs, "--grid", "--select", "val", "--calibrate").returncode == 0
    temperatures = json.loads((runs / "fusion" / "fusion.json").read_text())["temperatures"]["per_fold"]
    val = run_folder.collect_folds(runs, ["modelx", "modely"], "val")
    expected = [[calibration.fit_temperature(s.logits, s.labels) for s in sets] for sets in val]
    assert np.allclose(temperatures, expected)
    shuffle_test_labels(runs)  # a fit that read test labels would now change
    out = tmp_path / "again"
    assert fuse_fake_pair(runs, "--grid", "--select", "val", "--calibrate", "--out", str(out)).returncode == 0
    assert json.loads((out / "fusion.json").read_text())["temperatures"]["per_fold"] == temperatures


def test_calibrate_refuses_validation_cells_that_are_all_right_in_one_line(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    (easy,) = [s for s in run_folder.collect_folds(runs, ["modely"], "val")[2]]  # fold 3
    separable = np.eye(3)[easy.labels] * 30.0  # every cell right by a margin of 30: no finite temperature
    write_logits(runs / "modely" / "fold3" / "val_logits.npz", separable, easy.labels, list(easy.paths), "modely", 3)
    result = fuse_fake_pair(runs, "--grid", "--select", "val", "--calibrate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: --calibrate: fold 3, modely: all 60 calibration cells are classified right")
    assert not (runs / "fusion").exists()


def test_the_referral_threshold_is_certified_on_each_folds_validation_cells(tmp_path):
    from spermfuse.core.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    result = fuse_fake_pair(runs, "--grid", "--select", "val", "--refer-accuracy", "0.5")
    assert result.returncode == 0, result.stderr
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    val = run_folder.collect_folds(runs, ["modelx", "modely"], "val")
    for sets, weights, fold in zip(val, settings.weights_per_fold, settings.referral["per_fold"]):
        fused = calibration.probabilities_of(fusion.fuse([s.logits for s in sets], weights))
        certificate = certify_threshold(fused.max(axis=1), fused.argmax(axis=1) == sets[0].labels, 0.5, 0.1, "ltt")
        assert fold["certificate"] == certificate.to_dict()
    assert settings.referral["pooled"]["accepted"] > 0 and "pooled:" in result.stderr


def test_with_temperatures_the_certificate_is_of_the_probabilities_prediction_computes(tmp_path):
    """--calibrate divides the fused logits by their own temperature at prediction: the threshold
    must be certified on those probabilities, not on the members' scaled logits before it."""
    from spermfuse.core.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    promises = "--grid --select val --calibrate --refer-accuracy 0.5 --sets-alpha 0.2".split()
    result = fuse_fake_pair(runs, *promises)
    assert result.returncode == 0, result.stderr
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert any(abs(t - 1.0) > 1e-3 for t in settings.fused_temperatures())  # the fused temperature matters here
    for sets, fold in zip(run_folder.collect_folds(runs, ["modelx", "modely"], "val"), settings.folds):
        shipped = calibration.probabilities_of(
            fusion.fuse([s.logits for s in sets], settings.prediction_weights([fold])[0])
        )
        certificate = certify_threshold(shipped.max(axis=1), shipped.argmax(axis=1) == sets[0].labels, 0.5, 0.1, "ltt")
        stored, expected = settings.decision([fold])["referral"], certificate.to_dict()
        assert stored.keys() == expected.keys()
        for key, value in expected.items():  # float32 logits: the same up to rounding
            assert stored[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def test_calibration_cells_when_present_are_what_the_promises_are_fitted_on(tmp_path):
    from spermfuse.core.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    write_calibration_logits(runs)  # as train.py --cal-fraction writes them
    result = fuse_fake_pair(runs, "--grid", "--select", "val", "--refer-accuracy", "0.5")
    assert result.returncode == 0, result.stderr
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert settings.referral["calibrated_on"] == "each fold's calibration cells"
    cal = run_folder.collect_folds(runs, ["modelx", "modely"], "cal")
    for sets, weights, fold in zip(cal, settings.weights_per_fold, settings.referral["per_fold"]):
        fused = calibration.probabilities_of(fusion.fuse([s.logits for s in sets], weights))
        assert (
            fold["certificate"]
            == certify_threshold(fused.max(axis=1), fused.argmax(axis=1) == sets[0].labels, 0.5).to_dict()
        )


def test_a_calibration_holdout_shared_by_the_folds_certifies_their_average_too(tmp_path):
    """train.py --cal-holdout: every fold calibrates on the same cells, which none trained on; the
    average of the folds (--fold all) then gets its own certificate and set calibrator."""
    from spermfuse.core.conformal import calibrate_sets
    from spermfuse.core.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    write_calibration_logits(runs, n=120, shared=True, seed=11)  # the same cells in every fold
    promises = "--grid --select val --refer-accuracy 0.6 --sets-alpha 0.2".split()
    result = fuse_fake_pair(runs, *promises)
    assert result.returncode == 0, result.stderr
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert settings.certified_for(settings.folds) and not settings.certified_for(settings.folds[:2])
    cal = run_folder.collect_folds(runs, ["modelx", "modely"], "cal")
    by_path = []  # each fold's fused pair on the holdout, as --predict mixes it, in one cell order
    for sets, weights in zip(cal, settings.prediction_weights(settings.folds)):
        order = np.argsort(sets[0].paths)
        by_path.append(fusion.fuse([s.logits[order] for s in sets], weights))
    average = calibration.probabilities_of(np.mean(by_path, axis=0))
    truth = cal[0][0].labels[np.argsort(cal[0][0].paths)]
    expected = certify_threshold(average.max(axis=1), average.argmax(axis=1) == truth, 0.6).to_dict()
    assert settings.decision(settings.folds)["referral"] == expected
    calibrator = calibrate_sets(average, truth, 0.2, "lac", None).to_dict()
    assert settings.decision(settings.folds)["prediction_sets"] == calibrator
    assert settings.prediction_threshold(settings.folds) == expected["threshold"]


def test_without_a_shared_holdout_the_average_of_the_folds_has_no_certificate(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert (
        run_script("fuse.py", "--grid", "--select", "val", "--refer-accuracy", "0.5", "--runs", str(runs)).returncode
        == 0
    )
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert "average" not in settings.referral and not settings.certified_for(settings.folds)
    with pytest.raises(fusion.FusionError, match="or train with --cal-holdout F"):
        settings.prediction_threshold(settings.folds)


def test_prediction_sets_are_calibrated_per_fold_and_reported_on_its_test_cells(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = fuse_fake_pair(runs, "--grid", "--select", "val", "--sets-alpha", "0.2")
    assert result.returncode == 0, result.stderr
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert [f["fold"] for f in settings.sets["per_fold"]] == [1, 2, 3, 4, 5]
    assert (
        all(0.5 < f["test"]["coverage"] <= 1.0 for f in settings.sets["per_fold"])
        and settings.prediction_sets([2]).alpha == 0.2
    )
    with pytest.raises(run_folder.FusionError, match="certified per fold"):
        settings.prediction_sets([1, 2])


@pytest.mark.parametrize(
    "flag", [["--refer-accuracy", "0.9"], ["--target-accuracy", "0.9"], ["--sets-alpha", "0.1"], ["--calibrate"]]
)
def test_a_promise_on_a_weight_the_test_labels_chose_is_refused(tmp_path, flag):
    runs = fake_runs(tmp_path / "runs")
    result = fuse_fake_pair(runs, "--grid", *flag)
    assert result.returncode == 2 and "with --select test: the test labels would choose" in result.stderr
    assert not (runs / "fusion").exists()


def test_a_promise_flag_that_only_refines_another_is_refused_in_one_line(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = run_script("fuse.py", "--grid", "--select", "val", "--sets-method", "raps", "--runs", str(runs))
    assert result.returncode == 2 and "--sets-method refines --sets-alpha" in result.stderr
    assert not (runs / "fusion").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid", "--output", "p.csv"], "--output refines --predict FOLDER"),
        (["--grid", "--skip-bad"], "--skip-bad refines --predict FOLDER"),
        (["--predict", "cells", "--estimate-on", "groups"], "--estimate-on refines --samples"),
        (["--predict", "cells", "--normal-limit", "0.05"], "--normal-limit refines --samples"),
    ],
)
def test_a_flag_of_a_mode_not_asked_for_is_refused_in_one_line(tmp_path, flags, message):
    runs = fake_runs(tmp_path / "runs")
    result = run_script("fuse.py", *flags, "--runs", str(runs))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {message}: give {message.split(' refines ')[1]} too, or leave {message.split()[0]} out"
    ]
    assert not (runs / "fusion").exists()


def test_sets_by_part_groups_sperm18_classes_by_part_and_refuses_other_classes():
    by_part = choice.PredictionSets(0.1, by="part").groups(["Normal", "TaperedHead", "CurlyTail"])
    assert by_part == ("sperm", "head", "tail")  # Normal is a group of its own
    assert choice.PredictionSets(0.1).groups(["a", "b"]) is None
    with pytest.raises(fusion.FusionError, match="--sets-by part: knows sperm18's classes only"):
        choice.PredictionSets(0.1, by="part").groups(["a", "b"])


def test_the_old_name_target_accuracy_certifies_as_refer_accuracy_does_and_says_so(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    new = fuse_fake_pair(runs, "--grid", "--select", "val", "--refer-accuracy", "0.5", "--refer-delta", "0.2")
    assert new.returncode == 0, new.stderr
    expected = fusion_folder.read_fusion_settings(runs / "fusion").referral
    old = fuse_fake_pair(
        runs, "--grid", "--select", "val", "--target-accuracy", "0.5", "--refer-delta", "0.2", "--overwrite"
    )
    assert old.returncode == 0 and "--target-accuracy is now --refer-accuracy" in old.stderr
    assert fusion_folder.read_fusion_settings(runs / "fusion").referral == expected


def test_missing_validation_logits_are_one_line_and_write_nothing(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    (runs / "modelx" / "fold2" / "val_logits.npz").unlink()
    result = fuse_fake_pair(runs, "--grid", "--select", "nested", "--calibrate")
    assert (
        result.returncode == 2
        and "--calibrate needs every model's validation logits" in result.stderr
        and "fold(s) [2]" in result.stderr
    )
    assert not (runs / "fusion").exists()


def test_the_promises_summary_lists_every_fold_and_the_pooled_figures(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = fuse_fake_pair(
        runs,
        "--grid",
        "--select",
        "val",
        "--refer-accuracy",
        "0.5",
        "--sets-alpha",
        "0.2",
        "--summary",
        str(tmp_path / "promises.md"),
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "promises.md").read_text()
    settings = fusion_folder.read_fusion_settings(runs / "fusion")
    assert "Referral certified on each fold's validation cells (ltt)" in text and "| pooled |" in text
    assert f"pooled test coverage {settings.sets['pooled']['coverage']:.4f}" in text
    assert (
        sum(line.startswith(("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |")) for line in text.splitlines()) == 10
    )  # both tables


def test_fuse_without_models_fuses_every_trained_model_of_the_run_root(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = run_script("fuse.py", "--grid", "--runs", str(runs))
    assert result.returncode == 0, result.stderr
    assert json.loads((runs / "fusion" / "fusion.json").read_text())["models"] == ["modelx", "modely"]


def fold_outcome(right: int, accepted: int) -> dict:
    return {"test": {"accepted": accepted, "accepted_accuracy": right / accepted if accepted else math.nan}}


def test_a_fold_fails_its_referral_promise_only_when_its_upper_bound_is_below_the_target():
    # 81 of 118 (0.686) is consistent with 0.7; 50 of 100 is not; a fold that accepted nothing is not counted.
    folds = [fold_outcome(81, 118), fold_outcome(50, 100), fold_outcome(0, 0)]
    assert promises.folds_below_target(folds, 0.7) == 0.5


def test_folds_exactly_at_the_target_are_counted_as_failed_at_most_one_time_in_twenty():
    rng = np.random.default_rng(0)
    accepted = rng.integers(50, 400, 4000)
    folds = [fold_outcome(int(rng.binomial(n, 0.8)), int(n)) for n in accepted]
    point_estimates_below = np.mean([f["test"]["accepted_accuracy"] < 0.8 for f in folds])
    assert point_estimates_below > 0.4  # the old count called nearly half of these folds failures
    assert promises.folds_below_target(folds, 0.8) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(folds))


def test_the_promises_summary_reads_them_against_the_majority_class(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    summary = tmp_path / "promises.md"
    flags = ("--grid", "--select", "val", "--refer-accuracy", "0.5", "--sets-alpha", "0.2", "--summary", str(summary))
    assert fuse_fake_pair(runs, *flags).returncode == 0
    labels = np.concatenate([s[0].labels for s in run_folder.collect_folds(runs, ["modelx"], "test")])
    rate = np.bincount(labels).max() / len(labels)
    text = summary.read_text()
    assert text.count(f"always answering {CLASSES[np.bincount(labels).argmax()]} is right on {rate:.4f}") == 2


def test_an_unreachable_target_says_every_cell_is_referred_without_nan(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = fuse_fake_pair(runs, "--grid", "--select", "val", "--refer-accuracy", "0.99")
    assert result.returncode == 0, result.stderr
    assert "no threshold reaches 0.99 on its 60 validation cells: every cell is referred" in result.stderr
    assert "pooled: no threshold reaches 0.990 in any fold: every cell is referred" in result.stderr
    assert "nan" not in result.stderr
