"""The metrics (metrics.py): F1, specificity, intervals and the paired tests, each against a
hand computation or a reference implementation."""

import numpy as np
import pytest
from conftest import CLASSES

from spermfuse.core import metrics


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


def test_the_corrected_t_test_is_undefined_when_every_fold_differs_by_the_same_amount():
    a, b = [0.80, 0.82, 0.79, 0.81, 0.85], [0.78, 0.80, 0.77, 0.79, 0.83]  # every difference 0.02
    assert metrics.corrected_resampled_t_test(a, b, test_size=200, train_size=800) == {
        "corrected_t": None,
        "corrected_t_p": None,
    }
    assert metrics.corrected_resampled_t_test(a, a, test_size=200, train_size=800)["corrected_t_p"] == 1.0


def test_the_majority_class_answer_does_not_beat_itself_and_a_perfect_model_beats_it():
    labels = np.array([0] * 73 + [1] * 27)
    constant = metrics.against_majority(labels, np.zeros(100, dtype=int), ["normal", "abnormal"])
    assert constant == {"class": "normal", "rate": 0.73, "margin": 0.0, "p": 1.0, "beats": False}
    perfect = metrics.against_majority(labels, labels, ["normal", "abnormal"])
    assert perfect["beats"] and perfect["margin"] == pytest.approx(0.27) and perfect["p"] < 1e-6


def test_a_model_only_as_good_as_the_majority_class_is_said_to_beat_it_at_most_one_time_in_twenty():
    rng = np.random.default_rng(0)
    said, repeats = [], 2000
    for _ in range(repeats):
        labels = (rng.random(300) > 0.73).astype(int)  # 73 % in class 0, as the review's real binary set
        right = rng.random(300) < 0.73  # right as often as the constant answer, on other cells
        predicted = np.where(right, labels, 1 - labels)
        said.append(metrics.against_majority(labels, predicted, ["a", "b"])["beats"])
    assert np.mean(said) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / repeats)


def test_balanced_accuracy_is_the_mean_recall_over_the_classes_present():
    labels, logits = np.array([0, 0, 0, 1]), np.eye(3)[[0, 0, 1, 1]]
    assert metrics.summarize(labels, logits, ["a", "b", "c"])["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
