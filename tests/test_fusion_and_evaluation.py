import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spermfuse.config import preset_config
from conftest import CLASSES, fake_runs, write_logits
from spermfuse import calibration, fusion, metrics, run_folder

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_fuse_is_the_weighted_sum_of_logits():
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    assert np.allclose(fusion.fuse([a, b], [0.25, 0.75]), 0.25 * a + 0.75 * b)


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


def test_grid_search_picks_the_better_model_and_breaks_ties_toward_half(tmp_path):
    labels = np.array([0, 1, 2, 0])
    good = run_folder.LogitsSet(np.eye(3)[labels] * 5, labels, np.array(list("abcd")), CLASSES, "good", 1)
    bad = run_folder.LogitsSet(np.eye(3)[[1, 2, 0, 1]] * 5.0, labels, np.array(list("abcd")), CLASSES, "bad", 1)
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


def test_the_one_f1_matches_scikit_learn_with_absent_and_never_predicted_classes():
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 4, 300), rng.integers(1, 6, 300)  # class 0 never predicted, 4-5 never true
    precision, recall, f1, support = metrics.per_class_scores(metrics.confusion_counts(labels, predicted, 6))
    expected = precision_recall_fscore_support(labels, predicted, labels=range(6), zero_division=0)
    for ours, theirs in zip((precision, recall, f1, support), expected):
        assert np.allclose(ours, theirs)
    assert metrics.weighted_f1(labels, predicted, 6) == pytest.approx(
        f1_score(labels, predicted, average="weighted", zero_division=0)
    )
    logits = np.eye(6)[predicted]
    present = sorted(set(labels.tolist()))
    assert metrics.fold_metrics(labels, logits)["f1_macro"] == pytest.approx(
        f1_score(labels, predicted, labels=present, average="macro", zero_division=0)
    )


def test_specificity_from_a_hand_made_confusion_matrix():
    confusion = np.array([[5, 1], [2, 2]])  # class 0: TN = 2, FP = 2
    assert metrics.specificity_per_class(confusion).tolist() == pytest.approx([2 / 4, 5 / 6])


def test_student_t_interval_uses_k_minus_one_degrees_of_freedom():
    summary = metrics.mean_std_ci([1.0, 2.0, 3.0])
    assert summary["mean"] == 2.0 and summary["std"] == 1.0
    assert summary["ci95"][1] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert metrics.mean_std_ci([0.7])["ci95"] is None


def test_the_corrected_interval_widens_by_nadeau_and_bengios_factor():
    # Five folds, each model trained on 4x the cells it is tested on: n_test / n_train = 0.25.
    # By hand: s = 0.0790569, t(0.975, 4) = 2.776445, half-width = t * s * sqrt(1/5 + 0.25) = 0.147244.
    summary = metrics.mean_std_ci([0.5, 0.6, 0.7, 0.55, 0.65], test_train_ratio=0.25)
    assert summary["ci95_corrected"] == pytest.approx([0.6 - 0.147244, 0.6 + 0.147244], abs=1e-6)
    plain = summary["ci95"][1] - summary["mean"]
    assert (summary["ci95_corrected"][1] - summary["mean"]) / plain == pytest.approx(np.sqrt(0.45 * 5), rel=1e-9)
    assert metrics.mean_std_ci([0.5, 0.6])["ci95_corrected"] is None  # no ratio given


def test_training_sizes_leave_out_the_test_validation_and_calibration_cells():
    from spermfuse.evaluation import training_sizes
    from spermfuse.run_folder import LogitsSet

    def cells(fold: int, n: int) -> LogitsSet:
        return LogitsSet(
            np.zeros((n, 2)), np.zeros(n, int), np.array([f"{fold}_{i}" for i in range(n)]), ["a", "b"], "m", fold
        )

    tests = [cells(1, 10), cells(2, 12), cells(3, 8)]
    assert training_sizes(tests) == [20, 18, 22]
    assert training_sizes(tests, [[cells(1, 2), cells(2, 2), cells(3, 2)], None]) == [18, 16, 20]


def test_mcnemar_is_exact_binomial_on_discordant_pairs():
    labels = np.zeros(12, dtype=int)
    a = np.array([0] * 10 + [1] * 2)  # a right on 10
    b = np.array([1] * 8 + [0] * 4)  # b right on 4
    # discordant: a right only on 8 (idx 0-7), b right only on 2 (idx 10-11)
    from scipy.stats import binomtest

    assert metrics.mcnemar_p(labels, a, b) == pytest.approx(binomtest(8, 10, 0.5).pvalue)


def test_summarize_reports_every_key_of_report_json():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    summary = metrics.summarize(labels, np.eye(3)[labels] + rng.normal(0, 1, (90, 3)), CLASSES)
    expected = {
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "specificity_macro",
        "specificity_weighted",
        "auroc_macro",
        "auroc_weighted",
        "auprc_macro",
        "auprc_weighted",
        "per_class",
        "confusion",
    }
    assert expected <= set(summary)
    assert summary["recall_weighted"] == pytest.approx(summary["accuracy"])
    assert 0.5 < summary["auroc_macro"] <= 1.0
    assert set(summary["per_class"]["A"]) == {"precision", "recall", "f1", "support", "specificity"}


def test_fuse_grid_writes_table_weights_and_fused_logits(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = run("fuse.py", "--grid", "--runs", str(runs), "--models", "modelx", "modely", "--select", "nested")
    assert result.returncode == 0, result.stderr
    out = runs / "fusion"
    grid = (out / "grid.csv").read_text().splitlines()
    assert grid[0].startswith("a,fold1_acc,fold1_f1w") and len(grid) == 12
    settings = json.loads((out / "fusion.json").read_text())
    assert {"test", "nested", "val"} <= set(settings["selection_comparison"])
    assert len(settings["weights_per_fold"]) == 5
    fused = run_folder.load_logits(out / "fold3" / "test_logits.npz")
    assert fused.arch == "fusion" and fused.fold == 3
    assert "nested" in result.stderr and "optimistic" in result.stderr


def test_fuse_refuses_a_missing_fold(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    (runs / "modely" / "fold4" / "test_logits.npz").unlink()
    result = run("fuse.py", "--grid", "--runs", str(runs), "--models", "modelx", "modely")
    assert result.returncode == 2 and "fold(s) [4] missing" in result.stderr


def test_evaluate_writes_report_json_markdown_and_figures(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert run("fuse.py", "--alpha", "0.5", "--runs", str(runs), "--models", "modelx", "modely").returncode == 0
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "reports" / "evaluation"
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == CLASSES and set(report["models"]) == {"modelx", "modely", "fusion"}
    fused = report["models"]["fusion"]
    assert len(fused["folds"]["accuracy"]) == 5 and len(fused["summary"]["f1_weighted"]["ci95"]) == 2
    assert {t["a"] + "/" + t["b"] for t in report["tests"]} == {"modelx/modely", "modelx/fusion", "modely/fusion"}
    assert fused["aggregate"]["f1_macro"] > report["models"]["modelx"]["aggregate"]["f1_macro"]
    markdown = (out / "report.md").read_text()
    for table in ("Table 3", "Table 4", "Table 5", "Table 6", "Table 7"):
        assert table in markdown
    for figure in ("confusion_fusion.png", "roc_fusion.png", "pr_modelx.png", "f1_comparison.png"):
        assert (out / figure).stat().st_size > 1000


def test_evaluate_with_a_single_fold_says_so_instead_of_crashing(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=1)
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 0, result.stderr
    assert "only one fold" in (tmp_path / "r" / "evaluation" / "report.md").read_text()


def test_evaluate_refuses_models_with_different_classes(tmp_path):
    runs = fake_runs(tmp_path / "runs", folds=1)
    write_logits(
        runs / "other" / "fold1" / "test_logits.npz",
        [[0, 1, 0, 0]],
        [1],
        ["q"],
        "other",
        1,
        classes=["A", "B", "C", "D"],
    )
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 2 and "classes differ" in result.stderr


def test_ablation_lays_out_table_2(tmp_path):
    base = fake_runs(tmp_path / "base", seed=1)
    both = fake_runs(tmp_path / "both", seed=2)
    assert (
        run("fuse.py", "--grid", "--runs", str(both), "--models", "modelx", "modely").returncode == 0
    )  # fused folders beside the models
    result = run("evaluate.py", "--ablation", f"baseline={base}", f"both={both}", "--reports", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "r" / "ablation" / "ablation.md").read_text()
    assert table.count("fusion a=0.5") == 2 and "| baseline | modelx |" in table
    assert (
        table.count("| both |") == 4
    )  # the two backbones and the two fusions it computes, no fused folder as a "model"


@pytest.mark.parametrize(
    "device, message", [("gpu0", "--device gpu0: not a device"), ("cuda", "--device cuda: no CUDA device")]
)
def test_prediction_on_a_missing_device_gets_one_clear_line(tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = run("fuse.py", "--predict", str(tmp_path), "--runs", str(tmp_path), "--device", device)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1


def test_method_b_holdout_run_is_evaluated_as_a_single_split(tiny_sperm, tmp_path):
    import evaluate
    from spermfuse import trainer

    config = preset_config(
        "paper_b",
        arch="efficientnet_tiny",
        data=str(tiny_sperm),
        out=str(tmp_path / "runs"),
        img_size=32,
        workers=0,
        freeze_epochs=1,
        finetune_epochs=1,
        unfreeze_last=10,
    )
    run = trainer.train_fold(config)
    for argv in (["--runs", str(tmp_path / "runs")], ["--logits", f"b4={run}"], ["--logits", f"b4={run.parent}"]):
        reports = tmp_path / "reports" / str(len(argv[1]))
        assert evaluate.main([*argv, "--reports", str(reports), "--no-figures"]) == 0
        report = json.loads((reports / "evaluation" / "report.json").read_text())
        (model,) = report["models"].values()
        support = sum(c["support"] for c in model["aggregate"]["per_class"].values())
        assert support == len(np.load(run / "test_logits.npz")["labels"])  # Tables 3-4 over the holdout test split
        assert "single split" in (reports / "evaluation" / "report.md").read_text()


def test_the_honest_fusions_are_evaluated_against_the_members_too(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert run("fuse.py", "--grid", "--runs", str(runs), "--models", "modelx", "modely").returncode == 0
    settings = json.loads((runs / "fusion" / "fusion.json").read_text())
    members = run_folder.collect_folds(runs, ["modelx", "modely"])
    nested_weights = settings["selection_comparison"]["nested"]["weights_per_fold"]
    for sets, weights, fused in zip(members, nested_weights, run_folder.load_fold_sets(runs / "fusion" / "nested")):
        fused, *aligned = run_folder.align([fused, *sets])
        assert np.allclose(fused.logits, fusion.fuse([s.logits for s in aligned], weights), atol=1e-5)
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"), "--no-figures")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "reports" / "evaluation" / "report.json").read_text())
    pairs = {(t["a"], t["b"]) for t in report["tests"]}
    assert {("modelx", "fusion_nested"), ("modely", "fusion_val"), ("modelx", "fusion")} <= pairs
    assert all(t["corrected_t_p"] >= t["paired_t_p"] for t in report["tests"])  # report.json carries the corrected test
    markdown = (tmp_path / "reports" / "evaluation" / "report.md").read_text()
    assert "cannot give p below 0.0625" in markdown and "`fusion_val`" in markdown


def test_wilcoxon_floor_is_the_exact_test_with_every_difference_of_one_sign():
    from scipy import stats

    for folds in (5, 6, 8):
        differences = np.arange(1, folds + 1, dtype=float)
        assert metrics.wilcoxon_floor(folds) == pytest.approx(stats.wilcoxon(differences, method="exact").pvalue)


def test_corrected_resampled_t_is_the_paired_t_shrunk_by_the_overlap_of_training_sets():
    from scipy import stats

    a, b = [0.80, 0.82, 0.79, 0.81, 0.85], [0.78, 0.80, 0.79, 0.80, 0.80]
    paired = stats.ttest_rel(a, b)
    corrected = metrics.corrected_resampled_t_test(a, b, test_size=200, train_size=800)
    assert corrected["corrected_t"] == pytest.approx(paired.statistic / np.sqrt(1 + 5 * 200 / 800))
    assert corrected["corrected_t_p"] == pytest.approx(2 * stats.t.sf(abs(corrected["corrected_t"]), 4))
    assert corrected["corrected_t_p"] > paired.pvalue  # harder to call significant
    assert metrics.corrected_resampled_t_test(a, b, test_size=1e-9, train_size=1)["corrected_t"] == pytest.approx(
        paired.statistic
    )


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


def test_calibrated_fusion_fits_each_temperature_on_validation_logits_only(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert (
        run(
            "fuse.py", "--grid", "--select", "val", "--calibrate", "--runs", str(runs), "--models", "modelx", "modely"
        ).returncode
        == 0
    )
    temperatures = json.loads((runs / "fusion" / "fusion.json").read_text())["temperatures"]["per_fold"]
    val = run_folder.collect_folds(runs, ["modelx", "modely"], "val")
    expected = [[calibration.fit_temperature(s.logits, s.labels) for s in sets] for sets in val]
    assert np.allclose(temperatures, expected)
    shuffle_test_labels(runs)  # a fit that read test labels would now change
    out = tmp_path / "again"
    assert (
        run(
            "fuse.py",
            "--grid",
            "--select",
            "val",
            "--calibrate",
            "--runs",
            str(runs),
            "--models",
            "modelx",
            "modely",
            "--out",
            str(out),
        ).returncode
        == 0
    )
    assert json.loads((out / "fusion.json").read_text())["temperatures"]["per_fold"] == temperatures


def test_the_referral_threshold_is_certified_on_each_folds_validation_cells(tmp_path):
    from spermfuse.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    result = run(
        "fuse.py",
        "--grid",
        "--select",
        "val",
        "--refer-accuracy",
        "0.5",
        "--runs",
        str(runs),
        "--models",
        "modelx",
        "modely",
    )
    assert result.returncode == 0, result.stderr
    settings = run_folder.read_fusion_settings(runs / "fusion")
    val = run_folder.collect_folds(runs, ["modelx", "modely"], "val")
    for sets, weights, fold in zip(val, settings.weights_per_fold, settings.referral["per_fold"]):
        fused = calibration.probabilities_of(fusion.fuse([s.logits for s in sets], weights))
        certificate = certify_threshold(fused.max(axis=1), fused.argmax(axis=1) == sets[0].labels, 0.5, 0.1, "sgr")
        assert fold["certificate"] == certificate.to_dict()
    assert settings.referral["pooled"]["accepted"] > 0 and "pooled:" in result.stderr


def test_with_temperatures_the_certificate_is_of_the_probabilities_prediction_computes(tmp_path):
    """--calibrate divides the fused logits by their own temperature at prediction: the threshold
    must be certified on those probabilities, not on the members' scaled logits before it."""
    from spermfuse.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    result = run(
        "fuse.py", "--grid", "--select", "val", "--calibrate", "--refer-accuracy", "0.5", "--sets-alpha", "0.2",
        "--runs", str(runs), "--models", "modelx", "modely",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings = run_folder.read_fusion_settings(runs / "fusion")
    assert any(abs(t - 1.0) > 1e-3 for t in settings.fused_temperatures())  # the fused temperature matters here
    for sets, fold in zip(run_folder.collect_folds(runs, ["modelx", "modely"], "val"), settings.folds):
        shipped = calibration.probabilities_of(
            fusion.fuse([s.logits for s in sets], settings.prediction_weights([fold])[0])
        )
        certificate = certify_threshold(shipped.max(axis=1), shipped.argmax(axis=1) == sets[0].labels, 0.5, 0.1, "sgr")
        stored, expected = settings.decision([fold])["referral"], certificate.to_dict()
        assert stored.keys() == expected.keys()
        for key, value in expected.items():  # float32 logits: the same up to rounding
            assert stored[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def test_calibration_cells_when_present_are_what_the_promises_are_fitted_on(tmp_path):
    from spermfuse.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    rng = np.random.default_rng(7)
    for k in range(1, 6):  # cal_logits.npz as train.py --cal-fraction writes them
        labels = rng.integers(0, 3, 80)
        for arch in ("modelx", "modely"):
            write_logits(
                runs / arch / f"fold{k}" / "cal_logits.npz",
                np.eye(3)[labels] * 2 + rng.normal(0, 1, (80, 3)),
                labels,
                [f"cal_{k}_{i}.png" for i in range(80)],
                arch,
                k,
            )
    result = run(
        "fuse.py",
        "--grid",
        "--select",
        "val",
        "--refer-accuracy",
        "0.5",
        "--runs",
        str(runs),
        "--models",
        "modelx",
        "modely",
    )
    assert result.returncode == 0, result.stderr
    settings = run_folder.read_fusion_settings(runs / "fusion")
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
    from spermfuse.conformal import calibrate_sets
    from spermfuse.selective import certify_threshold

    runs = fake_runs(tmp_path / "runs")
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, 120)
    for k in range(1, 6):  # the same 120 cells in every fold, each fold's models scoring them
        order = rng.permutation(120)  # files need not share an order
        for arch in ("modelx", "modely"):
            logits = np.eye(3)[labels] * 2 + rng.normal(0, 1, (120, 3))
            write_logits(
                runs / arch / f"fold{k}" / "cal_logits.npz",
                logits[order],
                labels[order],
                [f"held_{i}.png" for i in order],
                arch,
                k,
            )
    result = run(
        "fuse.py", "--grid", "--select", "val", "--refer-accuracy", "0.6", "--sets-alpha", "0.2",
        "--runs", str(runs), "--models", "modelx", "modely",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings = run_folder.read_fusion_settings(runs / "fusion")
    assert settings.certified_for(settings.folds) and not settings.certified_for(settings.folds[:2])
    cal = run_folder.collect_folds(runs, ["modelx", "modely"], "cal")
    average, truth = fusion.average_probabilities(cal, settings.prediction_weights(settings.folds))
    expected = certify_threshold(average.max(axis=1), average.argmax(axis=1) == truth, 0.6).to_dict()
    assert settings.decision(settings.folds)["referral"] == expected
    calibrator = calibrate_sets(average, truth, 0.2, "aps", None, seed=5).to_dict()
    assert settings.decision(settings.folds)["prediction_sets"] == calibrator
    assert settings.prediction_threshold(settings.folds) == expected["threshold"]


def test_without_a_shared_holdout_the_average_of_the_folds_has_no_certificate(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert run("fuse.py", "--grid", "--select", "val", "--refer-accuracy", "0.5", "--runs", str(runs)).returncode == 0
    settings = run_folder.read_fusion_settings(runs / "fusion")
    assert "average" not in settings.referral and not settings.certified_for(settings.folds)
    with pytest.raises(fusion.FusionError, match="or train with --cal-holdout F"):
        settings.prediction_threshold(settings.folds)


def test_prediction_sets_are_calibrated_per_fold_and_reported_on_its_test_cells(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = run(
        "fuse.py",
        "--grid",
        "--select",
        "val",
        "--sets-alpha",
        "0.2",
        "--runs",
        str(runs),
        "--models",
        "modelx",
        "modely",
    )
    assert result.returncode == 0, result.stderr
    settings = run_folder.read_fusion_settings(runs / "fusion")
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
    result = run("fuse.py", "--grid", *flag, "--runs", str(runs), "--models", "modelx", "modely")
    assert result.returncode == 2 and "with --select test: the test labels would choose" in result.stderr
    assert not (runs / "fusion").exists()


def test_missing_validation_logits_are_one_line_and_write_nothing(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    (runs / "modelx" / "fold2" / "val_logits.npz").unlink()
    result = run(
        "fuse.py", "--grid", "--select", "nested", "--calibrate", "--runs", str(runs), "--models", "modelx", "modely"
    )
    assert (
        result.returncode == 2
        and "--calibrate needs every model's validation logits" in result.stderr
        and "fold(s) [2]" in result.stderr
    )
    assert not (runs / "fusion").exists()


def test_evaluate_reports_calibration_before_and_after_and_draws_both_figures(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert run("fuse.py", "--grid", "--runs", str(runs), "--models", "modelx", "modely").returncode == 0
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "reports"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "reports" / "evaluation"
    report = json.loads((out / "report.json").read_text())
    for name in ("modelx", "fusion"):
        block = report["models"][name]["calibration"]
        val = run_folder.load_fold_sets(runs / name, "val")
        assert block["temperature_per_fold"] == pytest.approx(
            [calibration.fit_temperature(v.logits, v.labels) for v in val]
        )
        assert block["after"]["nll"] < block["before"]["nll"]  # fake logits are over-confident: T > 1 helps
    assert report["models"]["fusion_nested"]["calibration"]["after"] is None  # no validation logits of its own
    assert "Calibration and selective prediction" in (out / "report.md").read_text()
    for figure in ("reliability_fusion.png", "reliability_modelx.png", "risk_coverage.png"):
        assert (out / figure).stat().st_size > 1000


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
        run(
            "fuse.py",
            "--grid",
            "--select",
            "val",
            "--calibrate",
            "--refer-accuracy",
            "0.5",
            "--sets-alpha",
            "0.2",
            "--runs",
            str(runs),
            "--models",
            "modelx",
            "modely",
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


def test_the_calibration_evaluate_reports_is_the_one_predict_applies(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    assert (
        run(
            "fuse.py", "--grid", "--select", "val", "--calibrate", "--runs", str(runs), "--models", "modelx", "modely"
        ).returncode
        == 0
    )
    settings = run_folder.read_fusion_settings(runs / "fusion")
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--no-figures")
    assert result.returncode == 0, result.stderr
    reported = json.loads((tmp_path / "r" / "evaluation" / "report.json").read_text())["models"]["fusion"][
        "calibration"
    ]
    assert reported["temperature_per_fold"] == settings.fused_temperatures()
    test = run_folder.collect_folds(runs, ["modelx", "modely"], "test")
    for k, (sets, fused) in enumerate(zip(test, run_folder.load_fold_sets(runs / "fusion"))):
        members = [s.logits / t for s, t in zip(sets, settings.temperatures["per_fold"][k])]
        shipped = calibration.probabilities_of(
            fusion.fuse([s.logits for s in sets], settings.prediction_weights([sets[0].fold])[0])
        )
        evaluated = calibration.probabilities_of(
            fusion.fuse(members, settings.weights_per_fold[k]) / settings.fused_temperatures()[k]
        )
        reordered = run_folder.align([sets[0], fused])[1]  # the fused file, in the members' order
        assert np.allclose(shipped, evaluated, atol=1e-6)
        assert np.allclose(
            calibration.probabilities_of(reordered.logits / settings.fused_temperatures()[k]), evaluated, atol=1e-6
        )


def test_the_promises_summary_lists_every_fold_and_the_pooled_figures(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = run(
        "fuse.py",
        "--grid",
        "--select",
        "val",
        "--refer-accuracy",
        "0.5",
        "--sets-alpha",
        "0.2",
        "--runs",
        str(runs),
        "--models",
        "modelx",
        "modely",
        "--summary",
        str(tmp_path / "promises.md"),
    )
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "promises.md").read_text()
    settings = run_folder.read_fusion_settings(runs / "fusion")
    assert "Referral certified on each fold's validation cells (sgr)" in text and "| pooled |" in text
    assert f"pooled test coverage {settings.sets['pooled']['coverage']:.4f}" in text
    assert (
        sum(line.startswith(("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |")) for line in text.splitlines()) == 10
    )  # both tables


def headline_models(seed: int = 0) -> dict:
    """Five folds of 40 cells: m1 right on ~60 %, m2 always right, fusion_val = m1, fusion = m2."""
    from spermfuse.run_folder import LogitsSet

    rng = np.random.default_rng(seed)
    models = {"m1": [], "m2": [], "fusion": [], "fusion_val": []}
    for fold in range(1, 6):
        labels = rng.integers(0, 3, 40)
        paths = np.array([f"{fold}_{i}.png" for i in range(40)])
        right = np.eye(3)[labels] * 3
        sometimes = np.where(rng.random(40)[:, None] < 0.6, right, np.eye(3)[(labels + 1) % 3] * 3)
        for name, logits in (("m1", sometimes), ("m2", right), ("fusion", right), ("fusion_val", sometimes)):
            models[name].append(LogitsSet(logits, labels, paths, ["a", "b", "c"], name, fold))
    return models


def test_the_headline_fusion_is_the_leak_free_one_with_both_tests_against_each_member():
    from spermfuse.evaluation import build_report

    report = build_report(headline_models(), select="test")
    line = report["headline"]
    assert line["fusion"] == "fusion_val" and "validation" in line["selection"]
    assert line["vs"]["m1"] == {"p_corrected_t": 1.0, "p_mcnemar": 1.0}  # identical predictions
    assert line["vs"]["m2"]["p_corrected_t"] < 0.01 and line["vs"]["m2"]["p_mcnemar"] < 1e-6  # m2 always right
    assert build_report(headline_models(), select="val")["headline"]["fusion"] == "fusion"


def test_without_a_leak_free_fusion_there_is_no_headline_and_the_summary_labels_the_paper_rule():
    from spermfuse.evaluation import build_report
    from spermfuse.report import presented_rows, summary_markdown

    models = headline_models()
    del models["fusion_val"]
    report = build_report(models, select="test")
    assert report["headline"] is None
    assert presented_rows(report)[-1] == ("fusion (paper's rule: a* on the test folds, optimistic)", "fusion")
    with_headline = build_report(headline_models(), select="test")
    text = summary_markdown(with_headline, None, "report.json", "test machine")
    assert "| fusion_val (headline) |" in text and "against m1" in text and "no evidence of a difference" in text
    assert "against m2" in text and "a difference on both tests" in text


def test_ablation_tests_each_setting_against_the_first_on_the_same_cells(tmp_path):
    from conftest import write_logits

    from spermfuse.evaluation import ablation_rows

    rng = np.random.default_rng(3)
    for fold in (1, 2):
        labels = rng.integers(0, 3, 60)
        paths = [f"{fold}_{i}.png" for i in range(60)]
        right = np.eye(3)[labels] * 3
        half = np.where(rng.random(60)[:, None] < 0.5, right, np.eye(3)[(labels + 1) % 3] * 3)
        for root, logits in (("plain", half), ("same", half), ("better", right)):
            write_logits(tmp_path / root / "m" / f"fold{fold}" / "test_logits.npz", logits, labels, paths, "m", fold)
    rows = ablation_rows({name: tmp_path / name for name in ("plain", "same", "better")}, [0.5])
    by_setting = {row[0]: row for row in rows}
    assert by_setting["plain"][5:] == ["-", "-"]
    assert by_setting["same"][5:] == ["1.0000", "none"]  # identical predictions: no evidence
    assert by_setting["better"][5:] == ["< 0.0001", "1 (+), 2 (+)"]


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


def test_fuse_without_models_fuses_every_trained_model_of_the_run_root(tmp_path):
    runs = fake_runs(tmp_path / "runs")
    result = run("fuse.py", "--grid", "--runs", str(runs))
    assert result.returncode == 0, result.stderr
    assert json.loads((runs / "fusion" / "fusion.json").read_text())["models"] == ["modelx", "modely"]


def test_report_html_is_one_self_contained_page_whose_images_all_decode(tmp_path):
    import base64
    import io
    from html.parser import HTMLParser

    from PIL import Image

    runs = fake_runs(tmp_path / "runs")
    assert run("fuse.py", "--grid", "--select", "val", "--runs", str(runs)).returncode == 0
    result = run("evaluate.py", "--runs", str(runs), "--reports", str(tmp_path / "r"), "--name", "page")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "r" / "page" / "report.html").read_text()

    class Images(HTMLParser):
        sources: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    parser = Images()
    parser.feed(text)
    assert len(parser.sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in parser.sources)
    for source in parser.sources:
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.width > 100 and image.height > 100
    assert "test cells of 3 classes" in text and "corrected for the folds" in text and "<script" not in text
    assert "sensitivity (recall)" in text and "command: python evaluate.py" in text and "http" not in text
    markdown = (tmp_path / "r" / "page" / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(linked) == 5 and all((tmp_path / "r" / "page" / name).is_file() for name in linked)
