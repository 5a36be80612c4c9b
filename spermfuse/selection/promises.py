"""The promises of a fusion, certified per fold on the mix prediction uses: a referral threshold
with its accuracy certificate (``selective.py``) and conformal prediction sets
(``conformal.py``), with their outcome on the fold's test cells and, for a calibration holdout
shared by the folds, for the folds' average.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from ..core.calibration import probabilities_of
from ..core.conformal import calibrate_sets, predict_sets, set_metrics
from ..core.fusion import fuse
from ..core.logits import LogitsSet
from ..core.metrics import majority_class
from ..core.selective import accepted_accuracy, certify_threshold, clopper_pearson_upper
from ..store.fusion_folder import FusionSettings

log = logging.getLogger(__name__)


MIN_PROMISE_CELLS = 30


def _fused_probabilities(
    folds: Sequence[Sequence[LogitsSet]], chosen: Sequence[Sequence[float]], check: str | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's fused probabilities and labels; with ``check`` (what is calibrated on them), a
    warning for a fold with too few cells to back a promise."""
    fused = [(probabilities_of(fuse([s.logits for s in sets], w)), sets[0].labels) for sets, w in zip(folds, chosen)]
    for sets, (_, labels) in zip(folds, fused):
        if check and len(labels) < MIN_PROMISE_CELLS:
            log.warning(
                "fold %d: %s rests on %d cells (fewer than %d): the promise still holds with its stated probability, "
                "but the threshold or sets it allows are coarse; a larger --cal-fraction gives more",
                sets[0].fold,
                check,
                len(labels),
                MIN_PROMISE_CELLS,
            )
    return fused


def shared_average(fused: Sequence[LogitsSet]) -> LogitsSet | None:
    """The folds' fused logits averaged cell by cell, as ``--predict --fold all`` computes them, in
    path order; None unless every fold holds the same cells (a calibration holdout shared by the
    folds, ``train.py --cal-holdout``: the one set on which their average can be calibrated)."""
    if len(fused) < 2:
        return None
    ordered = [np.argsort(f.paths) for f in fused]
    paths = fused[0].paths[ordered[0]]
    if any(len(f.paths) != len(paths) or not np.array_equal(f.paths[o], paths) for f, o in zip(fused, ordered)):
        return None
    logits = np.mean([f.logits[o] for f, o in zip(fused, ordered)], axis=0).astype(np.float32)
    return replace(fused[0], logits=logits, labels=fused[0].labels[ordered[0]], paths=paths)


def certify_average(
    average: LogitsSet, folds: Sequence[int], target_accuracy: float, delta: float = 0.1, method: str = "ltt"
) -> dict:
    """The referral certificate of the average of ``folds``' pairs, on the holdout they share
    (:func:`shared_average`); it has no test cells of its own (each fold's test cells trained the
    other folds)."""
    probabilities = probabilities_of(average.logits)
    certificate = certify_threshold(
        probabilities.max(axis=1), probabilities.argmax(axis=1) == average.labels, target_accuracy, delta, method
    )
    log.info(
        "average of the folds: certified threshold %s (%d of %d calibration holdout cells accepted)",
        "none (refer all)" if certificate.refers_all else f"{certificate.threshold:.4f}",
        certificate.n_accepted,
        certificate.n_calibration,
    )
    return {"folds": list(folds), "certificate": certificate.to_dict()}


def calibrate_average_sets(
    average: LogitsSet, folds: Sequence[int], alpha: float, method: str = "lac", by: Sequence[str] | None = None
) -> dict:
    """The conformal set calibrator of the average of ``folds``' pairs, on the holdout they share."""
    calibrator = calibrate_sets(probabilities_of(average.logits), average.labels, alpha, method, by)
    return {"folds": list(folds), "calibrator": calibrator.to_dict()}


def majority_of(per_fold: Sequence[Sequence[LogitsSet]]) -> dict:
    """The most frequent true class of the folds' test cells and its share: what always answering
    it would get right, the yardstick every promise is read against."""
    classes = per_fold[0][0].classes
    majority, rate = majority_class(np.concatenate([sets[0].labels for sets in per_fold]), len(classes))
    return {"class": classes[majority], "rate": rate}


def _referral_outcome(certificate, outcome: dict, calibrated_on: str) -> str:
    """One fold's certificate and its test outcome in words (no NaN where nothing was accepted)."""
    if certificate.refers_all:
        return (
            f"no threshold reaches {certificate.target_accuracy} on its {certificate.n_calibration} {calibrated_on} "
            "cells: every cell is referred"
        )
    tested = (
        f"{outcome['accepted']} accepted, accuracy {outcome['accepted_accuracy']:.4f} "
        f"[{outcome['interval'][0]:.4f}, {outcome['interval'][1]:.4f}]"
        if outcome["accepted"]
        else "no test cell reaches it"
    )
    return (
        f"certified threshold {certificate.threshold:.4f} ({certificate.n_accepted} of {certificate.n_calibration} "
        f"{calibrated_on} cells accepted); test: {tested}"
    )


FOLD_FAILURE_LEVEL = 0.95  # a fold has failed its promise when it is below the target at this confidence


def folds_below_target(folds: Sequence[dict], target_accuracy: float) -> float:
    """The share of folds (of those that accepted any test cell) whose test accuracy is below the
    target beyond sampling noise: its one-sided Clopper-Pearson upper bound at 95 % is below it.
    A point estimate under the target is no failure: with a threshold just above it, about half
    the folds of a model that keeps the promise would show one (review science-v0.3, m3)."""
    tested = [f["test"] for f in folds if f["test"]["accepted"]]
    if not tested:
        return math.nan
    right = [round(t["accepted_accuracy"] * t["accepted"]) for t in tested]
    upper = clopper_pearson_upper(right, [t["accepted"] for t in tested], FOLD_FAILURE_LEVEL)
    return float(np.mean(upper < target_accuracy))


def certify_referral(
    per_fold,
    per_fold_cal,
    chosen,
    target_accuracy: float,
    delta: float = 0.1,
    method: str = "ltt",
    calibrated_on: str = "validation",
) -> dict:
    """Per fold, a threshold certified on that fold's calibration cells (``selective.py``) for
    that fold's fused pair, and how it did on the fold's test cells; pooled over folds."""
    classes = per_fold[0][0].classes
    folds, pooled = [], []
    for (pv, yv), (pt, yt), sets in zip(
        _fused_probabilities(per_fold_cal, chosen, "the referral certificate"),
        _fused_probabilities(per_fold, chosen),
        per_fold,
    ):
        certificate = certify_threshold(pv.max(axis=1), pv.argmax(axis=1) == yv, target_accuracy, delta, method)
        correct, accepted = pt.argmax(axis=1) == yt, pt.max(axis=1) >= certificate.threshold
        per_class = {
            name: float(correct[accepted & (yt == c)].mean()) if (accepted & (yt == c)).any() else None
            for c, name in enumerate(classes)
        }
        outcome = accepted_accuracy(pt.max(axis=1), correct, certificate.threshold) | {"per_class_accuracy": per_class}
        folds.append({"fold": sets[0].fold, "certificate": certificate.to_dict(), "test": outcome})
        pooled.append((pt.max(axis=1) >= certificate.threshold, correct))
        log.info("fold %d: %s", sets[0].fold, _referral_outcome(certificate, outcome, calibrated_on))
    accepted = np.concatenate([a for a, _ in pooled])
    correct = np.concatenate([c for _, c in pooled])
    summary = accepted_accuracy(
        accepted.astype(float), correct, 0.5
    )  # every fold's accepted cells, by its own threshold
    below = folds_below_target(folds, target_accuracy)
    if not summary["accepted"]:
        log.info("pooled: no threshold reaches %.3f in any fold: every cell is referred", target_accuracy)
    else:
        log.info(
            "pooled: %d of %d accepted, accuracy %.4f [%.4f, %.4f] (promised >= %.3f with probability >= %.2f per "
            "fold); folds below it beyond doubt: %.0f %%",
            summary["accepted"],
            len(accepted),
            summary["accepted_accuracy"],
            *summary["interval"],
            target_accuracy,
            1 - delta,
            100 * below,
        )
    return {
        "target_accuracy": target_accuracy,
        "delta": delta,
        "method": method,
        "calibrated_on": f"each fold's {calibrated_on} cells",
        "promise": "marginal over classes, for new cells exchangeable with the calibration cells",
        "per_fold": folds,
        "pooled": summary,
        "folds_below_target": below,
        "majority": majority_of(per_fold),
    }


def calibrate_prediction_sets(
    per_fold,
    per_fold_cal,
    chosen,
    alpha: float,
    method: str = "lac",
    by: Sequence[str] | None = None,
    calibrated_on: str = "validation",
) -> dict:
    """Per fold, conformal sets (``conformal.py``) calibrated on that fold's calibration cells,
    and their coverage and size on its test cells; pooled over folds."""
    classes = per_fold[0][0].classes
    folds, covered, sizes = [], [], []
    for k, ((pv, yv), (pt, yt), sets) in enumerate(
        zip(
            _fused_probabilities(per_fold_cal, chosen, "the prediction sets"),
            _fused_probabilities(per_fold, chosen),
            per_fold,
        )
    ):
        calibrator = calibrate_sets(pv, yv, alpha, method, by)
        predicted = predict_sets(pt, calibrator)
        metrics = set_metrics(predicted, yt, classes)
        if by is not None:
            metrics["per_group_coverage"] = {
                g: float(predicted[np.arange(len(yt)), yt][np.isin(yt, [c for c, b in enumerate(by) if b == g])].mean())
                for g in dict.fromkeys(by)
            }
        folds.append({"fold": sets[0].fold, "calibrator": calibrator.to_dict(), "test": metrics})
        covered.append(predicted[np.arange(len(yt)), yt])
        sizes.append(predicted.sum(axis=1))
        log.info(
            "fold %d: prediction sets (%s, alpha %.2f): test coverage %.4f, mean size %.2f",
            sets[0].fold,
            method,
            alpha,
            metrics["coverage"],
            metrics["mean_size"],
        )
    pooled = {"coverage": float(np.concatenate(covered).mean()), "mean_size": float(np.concatenate(sizes).mean())}
    log.info(
        "pooled: coverage %.4f (promised >= %.2f), mean size %.2f", pooled["coverage"], 1 - alpha, pooled["mean_size"]
    )
    return {
        "alpha": alpha,
        "method": method,
        "by": list(by) if by is not None else None,
        "calibrated_on": f"each fold's {calibrated_on} cells",
        "per_fold": folds,
        "pooled": pooled,
        "majority": majority_of(per_fold),
    }


def certify_promises(
    settings: FusionSettings, per_fold, fit, per_fold_cal, shipped, refer, sets, by, calibrated_on
) -> None:
    """fusion.json's referral and sets: certified per fold on ``fit`` with the ``shipped`` weights
    and, when every fold holds the same calibration cells (train.py --cal-holdout), for the
    folds' average too."""
    if refer:
        settings.referral = certify_referral(
            per_fold, fit, shipped, refer.accuracy, refer.delta, refer.method, calibrated_on
        )
    if sets:
        settings.sets = calibrate_prediction_sets(per_fold, fit, shipped, sets.alpha, sets.method, by, calibrated_on)
    fused_cal = [replace(c[0], logits=fuse([s.logits for s in c], w)) for c, w in zip(per_fold_cal or [], shipped)]
    average = shared_average(fused_cal)
    if average is not None and refer:
        settings.referral["average"] = certify_average(
            average, settings.folds, refer.accuracy, refer.delta, refer.method
        )
    if average is not None and sets:
        settings.sets["average"] = calibrate_average_sets(average, settings.folds, sets.alpha, sets.method, by)
