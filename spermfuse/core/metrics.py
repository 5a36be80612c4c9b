"""The paper's evaluation (Sec. 3): per-class and averaged metrics, fold statistics, paired tests.

scikit-learn computes the ranking scores (AUROC, AUPRC). Precision, recall and F1 come from
one confusion-matrix bincount (``per_class_scores``), the single F1 implementation that the
report, the fold statistics and the fusion grid search share; it equals scikit-learn's with
``zero_division=0``. Specificity, Student-t intervals, McNemar and calibration are here too.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from .calibration import expected_calibration_error
from .calibration import probabilities_of as softmax  # the one softmax (float64, stable), under the name callers use

# SciPy's statistics and scikit-learn are imported in the functions that use them: a script that computes
# no metric (fuse.py --predict, --help) starts without loading them (about a second at every start).


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` as rows of 0s with a 1 in each label's column."""
    out = np.zeros((len(labels), num_classes), dtype=np.int64)
    out[np.arange(len(labels)), labels] = 1
    return out


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) from one bincount."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of every class; 0 where a ratio is 0/0.

    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted count), the harmonic mean of
    precision and recall without dividing twice.
    """
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)

    return ratio(tp, predicted_count), ratio(tp, support), ratio(2 * tp, support + predicted_count), support


def weighted_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Support-weighted F1 (the paper's selection criterion for the fusion weight)."""
    _, _, f1, support = per_class_scores(confusion_counts(labels, predicted, num_classes))
    return float((f1 * support).sum() / max(support.sum(), 1))


def specificity_per_class(confusion: np.ndarray) -> np.ndarray:
    """TN / (TN + FP) for every class of a confusion matrix (rows true, columns predicted)."""
    total = confusion.sum()
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    tn = total - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)


def ranking_scores(labels: np.ndarray, probabilities: np.ndarray, average: str, scorer) -> float:
    """Macro/weighted AUROC or AUPRC over the classes present (one-vs-rest); micro as sklearn does."""
    num_classes = probabilities.shape[1]
    truth = one_hot(labels, num_classes)
    if average == "micro":
        return float(scorer(truth.ravel(), probabilities.ravel()))
    present = [c for c in range(num_classes) if 0 < truth[:, c].sum() < len(labels)]
    if not present:
        return math.nan
    scores = np.array([scorer(truth[:, c], probabilities[:, c]) for c in present])
    if average == "macro":
        return float(scores.mean())
    support = truth[:, present].sum(axis=0)
    return float((scores * support).sum() / support.sum())


def summarize(labels: np.ndarray, logits: np.ndarray, classes: Sequence[str]) -> dict:
    """Every aggregate metric of one model's predictions (the report.json ``aggregate`` block).

    Prediction = argmax of the logits; probabilities = softmax(logits) for AUROC/AUPRC.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels)
    num_classes = len(classes)
    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_counts(labels, predicted, num_classes)
    precision, recall, f1, support = per_class_scores(confusion)
    specificity = specificity_per_class(confusion)
    weights = support / max(support.sum(), 1)
    present = support > 0
    result = {
        "accuracy": float((predicted == labels).mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "majority": against_majority(labels, predicted, classes),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "specificity_macro": float(specificity[present].mean()),
        "specificity_weighted": float((specificity * weights).sum()),
        "auroc_macro": ranking_scores(labels, probabilities, "macro", roc_auc_score),
        "auroc_weighted": ranking_scores(labels, probabilities, "weighted", roc_auc_score),
        "auprc_macro": ranking_scores(labels, probabilities, "macro", average_precision_score),
        "auprc_weighted": ranking_scores(labels, probabilities, "weighted", average_precision_score),
        "ece": expected_calibration_error(labels, probabilities),
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "specificity": float(specificity[c]),
            }
            for c, name in enumerate(classes)
        },
        "confusion": confusion.astype(int).tolist(),
    }
    return result


def majority_class(labels: np.ndarray, num_classes: int) -> tuple[int, float]:
    """The most frequent true class and its share of ``labels``: what always answering it gets right."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return int(counts.argmax()), float(counts.max() / counts.sum())


def against_majority(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], level: float = 0.05) -> dict:
    """The classifier that always answers the most frequent true class, on the same cells: its
    class, its accuracy (``rate``), the model's margin over it, and a one-sided exact McNemar test
    of "the model is right more often" (``p``: the cells only the model gets right against those
    only the constant gets right); ``beats`` when p < ``level``. On a data set where one class
    holds most cells, an accuracy that looks good can be no better than that constant answer."""
    from scipy import stats

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    majority, rate = majority_class(labels, len(classes))
    right, constant_right = predicted == labels, labels == majority
    only_model, only_constant = int((right & ~constant_right).sum()), int((~right & constant_right).sum())
    discordant = only_model + only_constant
    p = float(stats.binomtest(only_model, discordant, 0.5, alternative="greater").pvalue) if discordant else 1.0
    return {
        "class": classes[majority],
        "rate": rate,
        "margin": float(right.mean() - rate),
        "p": p,
        "beats": bool(p < level),
    }


def fold_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """The fold-wise figures of Table 5: accuracy, weighted/macro F1, micro AUROC/AUPRC."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    predicted = probabilities.argmax(axis=1)
    _, _, f1, support = per_class_scores(confusion_counts(labels, predicted, probabilities.shape[1]))
    return {
        "accuracy": float((predicted == labels).mean()),
        "f1_weighted": float((f1 * support).sum() / support.sum()),
        "f1_macro": float(f1[support > 0].mean()),
        "auroc_micro": ranking_scores(labels, probabilities, "micro", roc_auc_score),
        "auprc_micro": ranking_scores(labels, probabilities, "micro", average_precision_score),
    }


def mean_std_ci(values: Sequence[float], confidence: float = 0.95, test_train_ratio: float | None = None) -> dict:
    """Mean, unbiased std and Student-t confidence interval (t with k-1 degrees of freedom).

    ``ci95`` is the paper's mean ± t·s/√k, which treats the folds as independent. The folds'
    models share most of their training cells, so their scores are correlated; ``ci95_corrected``
    widens the interval by Nadeau & Bengio's factor (2003): mean ± t·s·√(1/k + n_test/n_train),
    given ``test_train_ratio`` = n_test / n_train (None without it). With a single value there
    is no spread: std and both intervals are None.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    k = len(values)
    mean = float(values.mean())
    if k < 2:
        return {"mean": mean, "std": None, "ci95": None, "ci95_corrected": None}
    std = float(values.std(ddof=1))
    t = float(stats.t.ppf(0.5 + confidence / 2, k - 1))
    half = t * std / math.sqrt(k)
    corrected = None
    if test_train_ratio is not None:
        wide = t * std * math.sqrt(1.0 / k + test_train_ratio)
        corrected = [mean - wide, mean + wide]
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "ci95_corrected": corrected}


def mcnemar_p(labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray) -> float:
    """Exact McNemar test on the samples where exactly one of the two models is right."""
    from scipy import stats

    right_a = predicted_a == labels
    right_b = predicted_b == labels
    only_a = int((right_a & ~right_b).sum())
    only_b = int((~right_a & right_b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_tests(fold_scores_a: Sequence[float], fold_scores_b: Sequence[float]) -> dict:
    """Paired t-test and Wilcoxon signed-rank on fold-wise scores (Table 6); None when undefined."""
    from scipy import stats

    a, b = np.asarray(fold_scores_a, dtype=np.float64), np.asarray(fold_scores_b, dtype=np.float64)
    if len(a) < 2:
        return {"paired_t_p": None, "wilcoxon_p": None}
    differences = a - b
    if np.allclose(differences, 0):
        return {"paired_t_p": 1.0, "wilcoxon_p": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_p = float(stats.ttest_rel(a, b).pvalue)
        w_p = float(stats.wilcoxon(a, b).pvalue)
    return {"paired_t_p": None if math.isnan(t_p) else t_p, "wilcoxon_p": w_p}


def corrected_resampled_t_test(
    fold_scores_a: Sequence[float], fold_scores_b: Sequence[float], test_size: float, train_size: float
) -> dict:
    """The corrected resampled t-test of Nadeau & Bengio (2003, Machine Learning 52:239-281).

    The folds' training sets overlap, so their scores are correlated and the plain paired
    t-test's variance s^2 / k is too small. The correction inflates it by the ratio of test to
    training size:  t = mean(d) / sqrt((1/k + n_test/n_train) s^2),  with k - 1 degrees of
    freedom, d the fold-wise differences and s^2 their unbiased variance. None when undefined
    (fewer than two folds, or every fold the same non-zero difference).
    """
    from scipy import stats

    differences = np.asarray(fold_scores_a, dtype=np.float64) - np.asarray(fold_scores_b, dtype=np.float64)
    k = len(differences)
    if k < 2 or train_size <= 0:
        return {"corrected_t": None, "corrected_t_p": None}
    variance = differences.var(ddof=1)
    if np.allclose(differences, differences[0], rtol=0.0, atol=1e-12):  # every fold the same difference: no spread
        if abs(differences[0]) <= 1e-12:
            return {"corrected_t": 0.0, "corrected_t_p": 1.0}
        return {"corrected_t": None, "corrected_t_p": None}  # t = d / 0: undefined, not p = 0 (science-v0.3, m7)
    t = float(differences.mean() / math.sqrt((1.0 / k + test_size / train_size) * variance))
    return {"corrected_t": t, "corrected_t_p": float(2 * stats.t.sf(abs(t), k - 1))}


def group_bootstrap_interval(
    correct: np.ndarray, groups: Sequence[str], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the accuracy when whole groups (patients) are resampled with
    replacement: cells of one patient are not independent trials, and resampling them one by
    one (or Wilson's interval) is too narrow when a patient gives many cells."""
    names, group_of_cell = np.unique(np.asarray(groups), return_inverse=True)
    right = np.bincount(group_of_cell, weights=np.asarray(correct, dtype=np.float64), minlength=len(names))
    cells = np.bincount(group_of_cell, minlength=len(names)).astype(np.float64)
    drawn = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    accuracy = right[drawn].sum(axis=1) / cells[drawn].sum(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(accuracy, tail)), float(np.percentile(accuracy, 100 - tail))


def wilcoxon_floor(pairs: int) -> float:
    """The smallest p-value the exact two-sided Wilcoxon signed-rank test can give with ``pairs``
    pairs: every difference of one sign, 2 / 2^n (0.0625 for five folds)."""
    return 2.0 / 2.0**pairs


def top_confusions(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], top: int = 3
) -> dict[str, list[tuple[str, int]]]:
    """For each true class, the classes it is most often mistaken for (Table 7)."""
    matrix = np.asarray(confusion)
    out = {}
    for c, name in enumerate(classes):
        row = matrix[c].copy()
        row[c] = 0
        order = [j for j in np.argsort(-row, kind="stable") if row[j] > 0][:top]
        out[name] = [(classes[j], int(row[j])) for j in order]
    return out
