"""Adaptive logit fusion (Sec. 2.5): z = a * z_EfficientNetV2S + (1 - a) * z_ResNet50V2.

The paper picks a on a grid {0.0, 0.1, ..., 1.0} by the mean weighted F1 over the five
test folds, which reports an optimistic figure (a is tuned on the data it is scored
on). Two other selections are offered beside it, and what each guarantees:

- ``val``: a for fold k on fold k's validation logits, from fold k's own models. Nothing
  of fold k's test images is used, neither by the models nor by the choice of a: the
  fold's test score is an honest estimate.
- ``nested``: a for fold k on the *other* folds' test logits. Fold k's test logits are not
  used, but the models of the other folds trained on fold k's test images, so it is not
  strictly leak-free; the leak is weak (one weight chosen from a grid by scores of
  models that saw those images among 80 % of their data), smaller than the paper's.

N >= 2 models are supported, with weights on the simplex grid.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from . import run_folder
from .calibration import CalibrationError, fit_temperature, probabilities_of
from .conformal import calibrate_sets, predict_sets, set_metrics
from .errors import FusionError
from .files import file_sha256
from .flags import setting
from .metrics import fold_metrics, majority_class, weighted_f1
from .run_folder import FusionSettings, LogitsSet, Selection
from .selective import accepted_accuracy, certify_threshold, clopper_pearson_upper
from .taxonomy import DEFECT_PART

log = logging.getLogger(__name__)


def fuse(logit_list: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of logits, sum_i w_i z_i (Eq. of Sec. 2.5)."""
    if len(logit_list) != len(weights):
        raise ValueError(f"{len(logit_list)} logit arrays but {len(weights)} weights")
    return sum(float(w) * np.asarray(z, dtype=np.float32) for w, z in zip(weights, logit_list))


def fused_folds(
    runs: Path, models: Sequence[str], folds: Sequence[int], weights: Sequence[Sequence[float]], split: str = "test"
) -> list[LogitsSet]:
    """The members' ``split`` logits of ``folds`` fused with each fold's ``weights`` (as
    ``--predict`` mixes them: ``FusionSettings.prediction_weights``), one set per fold."""
    per_fold = {sets[0].fold: sets for sets in run_folder.collect_folds(runs, models, split)}
    missing = [k for k in folds if k not in per_fold]
    if missing:
        raise FusionError(f"{runs}: no {split}_logits.npz of fold(s) {missing} for {', '.join(models)}")
    return [
        replace(per_fold[k][0], logits=fuse([s.logits for s in per_fold[k]], w), arch="fusion")
        for k, w in zip(folds, weights)
    ]


def simplex_grid(num_models: int, alphas: Sequence[float]) -> list[tuple[float, ...]]:
    """Weight vectors to try. Two models: (a, 1 - a) for a in ``alphas``. More: every vector
    whose entries all come from ``alphas`` and sum to 1 (so an uneven grid is used as given)."""
    if num_models == 2:
        return [(round(a, 10), round(1.0 - a, 10)) for a in alphas]
    values = sorted(set(round(a, 10) for a in alphas))
    grid = [combo for combo in itertools.product(values, repeat=num_models) if abs(sum(combo) - 1.0) < 1e-9]
    if not grid:
        raise FusionError(
            f"--alphas {','.join(f'{a:g}' for a in values)}: no {num_models} of these weights sum to 1; use a grid such as 0:1:0.1"
        )
    return grid


def closest_to_uniform(weights: tuple[float, ...]) -> float:
    return sum((w - 1 / len(weights)) ** 2 for w in weights)


def select_best(scores: dict[tuple[float, ...], float]) -> tuple[float, ...]:
    """Highest score; ties (within 1e-12) go to the weights closest to equal (0.5 for two)."""
    best = max(scores.values())
    tied = [w for w, s in scores.items() if s >= best - 1e-12]
    return min(tied, key=closest_to_uniform)


@dataclass
class GridResult:
    """Table 1: per fold and weight vector, accuracy and weighted F1; plus the choice."""

    weights: list[tuple[float, ...]]
    folds: list[int]
    accuracy: np.ndarray  # [len(weights), len(folds)]
    f1_weighted: np.ndarray
    best: tuple[float, ...]


def score_grid(
    per_fold: Sequence[Sequence[LogitsSet]], grid: Sequence[tuple[float, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and weighted F1 of every weight vector on every fold ([weights, folds])."""
    accuracy = np.zeros((len(grid), len(per_fold)))
    f1 = np.zeros_like(accuracy)
    for j, sets in enumerate(per_fold):
        labels = sets[0].labels
        for i, weights in enumerate(grid):
            fused = fuse([s.logits for s in sets], weights)
            predicted = fused.argmax(axis=1)
            accuracy[i, j] = (predicted == labels).mean()
            f1[i, j] = weighted_f1(labels, predicted, len(sets[0].classes))
    return accuracy, f1


def grid_search(per_fold: Sequence[Sequence[LogitsSet]], alphas: Sequence[float]) -> GridResult:
    """The paper's search: a* = argmax of the mean weighted F1 over the folds."""
    grid = simplex_grid(len(per_fold[0]), alphas)
    accuracy, f1 = score_grid(per_fold, grid)
    best = select_best({w: s for w, s in zip(grid, f1.mean(axis=1))})
    return GridResult(grid, [sets[0].fold for sets in per_fold], accuracy, f1, best)


def nested_selection(result: GridResult) -> list[tuple[float, ...]]:
    """For each fold, the weights that are best on the *other* folds' test logits.

    Fold k's own test logits are never used; the other folds' models did train on fold k's
    images, so this is not strictly leak-free (see the module docstring; ``val`` is).
    """
    chosen = []
    for j in range(len(result.folds)):
        others = [k for k in range(len(result.folds)) if k != j]
        if not others:
            raise FusionError("nested selection needs at least two folds")
        chosen.append(select_best({w: result.f1_weighted[i, others].mean() for i, w in enumerate(result.weights)}))
    return chosen


def validation_selection(
    per_fold_val: Sequence[Sequence[LogitsSet]], alphas: Sequence[float]
) -> list[tuple[float, ...]]:
    """For each fold, the weights that are best on that fold's validation logits (no use of its test images)."""
    grid = simplex_grid(len(per_fold_val[0]), alphas)
    chosen = []
    for sets in per_fold_val:
        _, f1 = score_grid([sets], grid)
        chosen.append(select_best({w: s for w, s in zip(grid, f1[:, 0])}))
    return chosen


MIN_CALIBRATION_IMAGES = 10


def fit_temperatures(
    per_fold_val: Sequence[Sequence[LogitsSet]], names: Sequence[str] | None = None
) -> list[list[float]]:
    """Per fold, each model's temperature, fitted on that fold's *validation* logits only.

    A fold whose validation set is too small or holds one class, whose cells are all classified
    right (no finite temperature fits them) or whose fit runs to a bound of its search cannot
    calibrate: refused in one line naming the fold, the model and the reason."""
    temperatures = []
    for sets in per_fold_val:
        labels = sets[0].labels
        if len(labels) < MIN_CALIBRATION_IMAGES or len(np.unique(labels)) < 2:
            raise FusionError(
                f"--calibrate: fold {sets[0].fold} validates on {len(labels)} images of {len(np.unique(labels))} class(es); "
                f"a temperature needs at least {MIN_CALIBRATION_IMAGES} images of two or more classes (a larger --val-fraction, or leave --calibrate out)"
            )
        fold = []
        for name, logits_set in zip(names or [s.source for s in sets], sets):
            try:
                fold.append(fit_temperature(logits_set.logits, logits_set.labels))
            except CalibrationError as error:
                raise FusionError(f"--calibrate: fold {logits_set.fold}, {name}: {error}") from None
        temperatures.append(fold)
    return temperatures


def with_temperatures(
    per_fold: Sequence[Sequence[LogitsSet]], temperatures: Sequence[Sequence[float]]
) -> list[list[LogitsSet]]:
    """Every model's logits divided by its temperature of that fold (calibrated before fusing)."""
    return [
        [replace(s, logits=(s.logits / np.float32(t)).astype(np.float32)) for s, t in zip(sets, temps)]
        for sets, temps in zip(per_fold, temperatures)
    ]


def evaluate_choice(per_fold: Sequence[Sequence[LogitsSet]], chosen: Sequence[tuple[float, ...]]) -> dict:
    """Fold-wise test metrics of per-fold weight choices, and their means."""
    rows = [fold_metrics(sets[0].labels, fuse([s.logits for s in sets], w)) for sets, w in zip(per_fold, chosen)]
    return {key: float(np.mean([r[key] for r in rows])) for key in ("accuracy", "f1_weighted", "f1_macro")}


MAX_GRID_POINTS = 1001


def parse_alphas(text: str) -> list[float]:
    """``0:1:0.1`` (start:stop:step, inclusive) or ``0,0.25,0.5``; at most ``MAX_GRID_POINTS`` values."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
        else:
            values = [float(x) for x in text.split(",")]
    except ValueError:
        raise FusionError(f"--alphas {text}: give start:stop:step (e.g. 0:1:0.1) or a comma list") from None
    if ":" in text:
        if not all(math.isfinite(x) for x in (start, stop, step)) or step <= 0:
            raise FusionError(f"--alphas {text}: the step must be a number > 0, e.g. 0:1:0.1")
        if start > stop:
            raise FusionError(
                f"--alphas {text}: start {start:g} is above stop {stop:g}; give start:stop:step with start <= stop"
            )
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_GRID_POINTS:
            raise FusionError(
                f"--alphas {text}: {count} grid points; at most {MAX_GRID_POINTS} (a step of 0.001 on [0, 1])"
            )
        values = [round(start + i * step, 10) for i in range(count)]
    if len(values) > MAX_GRID_POINTS:
        raise FusionError(f"--alphas {text}: {len(values)} values; at most {MAX_GRID_POINTS}")
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise FusionError(f"--alphas {text}: weights must lie in [0, 1]")
    return values


def grid_table(result: GridResult, names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Table 1 as header + rows: weights, per-fold accuracy and weighted F1, means."""
    weight_columns = ["a"] if len(names) == 2 else [f"w_{n}" for n in names]
    header = weight_columns + [f"fold{k}_{m}" for k in result.folds for m in ("acc", "f1w")] + ["mean_acc", "mean_f1w"]
    rows = []
    for i, weights in enumerate(result.weights):
        shown = [f"{weights[0]:.2f}"] if len(names) == 2 else [f"{w:.2f}" for w in weights]
        cells = [
            f"{v:.4f}" for j in range(len(result.folds)) for v in (result.accuracy[i, j], result.f1_weighted[i, j])
        ]
        rows.append(shown + cells + [f"{result.accuracy[i].mean():.4f}", f"{result.f1_weighted[i].mean():.4f}"])
    return header, rows


# --------------------------------------------------------------------------- choosing the mix (fuse.py)

# Each selection rule: its --select name, its folder beside the chosen one, and what it means.
RULES = {
    "test": ("optimistic", "max mean weighted F1 over the test folds (the paper's; optimistic)"),
    "val": ("val", "per fold, max weighted F1 on that fold's validation logits (no use of its test images)"),
    "nested": (
        "nested",
        "per fold, max mean weighted F1 on the other folds' test logits (their models trained on this fold's images)",
    ),
}


@dataclass(frozen=True)
class Choice:
    """How ``fuse.py --grid`` chooses the weights: the rule, the grid, and temperatures first."""

    select: str = setting(
        "test",
        "test: the paper's choice on the test folds (optimistic); val: per fold on validation logits (no test "
        "leakage); nested: per fold on the other folds' test logits (those models trained on fold k's images)",
        "fusion",
        choices=list(RULES),
    )
    alphas: str = setting("0:1:0.1", "the weight grid, start:stop:step or a comma list", "fusion")
    calibrate: bool = setting(
        False,
        "temperature-scale each member per fold on its calibration (else validation) logits before fusing",
        "fusion",
    )


@dataclass(frozen=True)
class Referral:
    """--refer-accuracy: the accuracy promised on accepted cells, with probability 1 - delta."""

    accuracy: float | None = setting(
        None,
        "refer the cells below a confidence threshold certified on held-out cells: accepted accuracy >= TAU with "
        "probability >= 1 - --refer-delta",
        "promises",
        metavar="TAU",
    )
    delta: float = setting(0.1, "--refer-accuracy: the probability that the promise fails", "promises")
    method: str = setting(
        "ltt",
        "--refer-accuracy: the certificate: Learn-Then-Test fixed sequence, SGR binary search or a Bonferroni grid "
        "(docs/EVALUATION.md)",
        "promises",
        choices=["ltt", "sgr", "grid"],
    )


@dataclass(frozen=True)
class PredictionSets:
    """--sets-alpha: conformal sets that miss the true class with probability at most alpha."""

    alpha: float | None = setting(
        None,
        "conformal prediction sets that miss the true class with probability <= ALPHA (e.g. 0.1)",
        "promises",
        metavar="ALPHA",
    )
    method: str = setting(
        "lac",
        "--sets-alpha: the conformal score (lac: the smallest sets; aps/raps adapt a set to the cell's difficulty, "
        "at a larger size: docs/EVALUATION.md)",
        "promises",
        choices=["lac", "aps", "raps"],
    )
    by: str = setting(
        "none",
        "--sets-alpha: part = coverage per defect part group (head, neck, tail; Normal alone; sperm18's classes)",
        "promises",
        choices=["none", "part"],
    )

    def groups(self, classes: Sequence[str]) -> tuple[str, ...] | None:
        """The group of each class (Mondrian coverage), or None for one group."""
        return part_groups(classes) if self.by == "part" else None


def _grid_rules(
    per_fold, per_fold_val, alphas: Sequence[float], names: Sequence[str]
) -> tuple[dict[str, list | None], dict, tuple]:
    """Every rule's weights per fold (None where impossible), their test figures, and Table 1."""
    result = grid_search(per_fold, alphas)
    chosen = {"test": [result.best] * len(per_fold), "nested": nested_selection(result) if len(per_fold) > 1 else None}
    chosen["val"] = validation_selection(per_fold_val, alphas) if per_fold_val is not None else None
    comparison = {
        rule: evaluate_choice(per_fold, c) | {"weights_per_fold": [list(w) for w in c]}
        for rule, c in chosen.items()
        if c
    }
    log.info("--select                      mean acc   mean F1w   mean F1m   weights per fold")
    for rule, figures in comparison.items():
        shown = " ".join("/".join(f"{x:.1f}" for x in w) for w in figures["weights_per_fold"])
        label = "test (the paper's, optimistic)" if rule == "test" else rule
        log.info(
            "%-29s %8.4f   %8.4f   %8.4f   %s",
            label,
            figures["accuracy"],
            figures["f1_weighted"],
            figures["f1_macro"],
            shown,
        )
    return chosen, comparison, grid_table(result, names)


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


def promise_flags(calibrate: bool, refer: object, sets: object) -> list[str]:
    """The flags of the promises asked for: ``--calibrate``, ``--refer-accuracy``, ``--sets-alpha``."""
    asked = (("--calibrate", calibrate), ("--refer-accuracy", refer is not None), ("--sets-alpha", sets is not None))
    return [flag for flag, given in asked if given]


def held_out_folds(runs: Path, models: Sequence[str], split: str, promises: Sequence[str]) -> list | None:
    """Every model's ``split`` logits per fold (``val``, or ``cal`` with train.py --cal-fraction or
    --cal-holdout); None when some are missing, unless a promise (``promise_flags``) needs the
    validation logits."""
    try:
        per_fold = run_folder.collect_folds(runs, models, split)
    except FusionError as error:
        if split == "val" and promises:
            raise FusionError(f"{promises[0]} needs every model's validation logits: {error}") from None
        return None
    if split == "cal":
        log.info(
            "calibration cells found (cal_logits.npz): temperatures, referral and prediction sets are fitted on them"
        )
    return per_fold


def part_groups(classes: Sequence[str]) -> tuple[str, ...]:
    """``--sets-by part``: each sperm18 class's part group (head, neck, tail; Normal alone)."""
    unknown = [c for c in classes if c not in DEFECT_PART]
    if unknown:
        raise FusionError(
            f"--sets-by part: knows sperm18's classes only, not {', '.join(unknown[:3])}; use --sets-by none"
        )
    return tuple(DEFECT_PART[c] for c in classes)


def _check_promises(rule: str, alpha: float | None, per_fold_val, calibrate: bool, refer, sets) -> None:
    """A promise may rest neither on weights the test labels chose nor on missing validation logits."""
    promises = promise_flags(calibrate, refer, sets)
    if promises and alpha is None and rule == "test":
        raise FusionError(
            f"{promises[0]} with --select test: the test labels would choose the fusion weight that the promise is then tested on; "
            "add --select val (or fix the weight with --alpha)"
        )
    if promises and per_fold_val is None:
        raise FusionError(f"{promises[0]} needs every model's validation logits (val_logits.npz)")


def _mix(per_fold, per_fold_val, models: Sequence[str], rule: str, alphas: str, alpha: float | None):
    """(weights per fold, the other rules' weights by folder, Table 1, the rules' test figures, the rule's description)."""
    if alpha is not None:
        if len(models) != 2 or not 0.0 <= alpha <= 1.0:
            raise FusionError("--alpha needs exactly two --models and a value in [0, 1]")
        return [(alpha, 1.0 - alpha)] * len(per_fold), {}, None, None, "fixed"
    by_rule, comparison, grid = _grid_rules(per_fold, per_fold_val, parse_alphas(alphas), models)
    if by_rule[rule] is None:
        raise FusionError(f"--select {rule}: not possible here (needs val_logits.npz / two or more folds)")
    others = {RULES[name][0]: c for name, c in by_rule.items() if c and name != rule}
    return by_rule[rule], others, grid, comparison, RULES[rule][1]


def fused_temperatures(fit: Sequence[Sequence[LogitsSet]], chosen: Sequence[Sequence[float]]) -> list[float]:
    """Per fold, the temperature of the fused logits (members already scaled by their own), fitted on ``fit``."""
    fused = [[replace(sets[0], logits=fuse([s.logits for s in sets], w))] for sets, w in zip(fit, chosen)]
    temperatures = [t for (t,) in fit_temperatures(fused, ["the fused pair"])]
    log.info("fused temperatures per fold: %s", ", ".join(f"{t:.3f}" for t in temperatures))
    return temperatures


def _with_member_temperatures(per_fold, per_fold_val, per_fold_cal, models: Sequence[str]):
    """--calibrate: each member's temperature per fold, fitted on the calibration (else validation)
    logits only, and every split's logits divided by it: (temperatures, test, val, cal)."""
    temperatures = fit_temperatures(per_fold_cal if per_fold_cal is not None else per_fold_val, models)
    for fold_sets, temps in zip(per_fold, temperatures):
        shown = ", ".join(f"{name} {t:.3f}" for name, t in zip(models, temps))
        log.info("fold %d temperatures: %s", fold_sets[0].fold, shown)
    scaled = [
        with_temperatures(split, temperatures) if split is not None else None
        for split in (per_fold, per_fold_val, per_fold_cal)
    ]
    return temperatures, *scaled


def _promises(settings: FusionSettings, per_fold, fit, per_fold_cal, shipped, refer, sets, by, calibrated_on) -> None:
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


def select(
    per_fold: list[list[LogitsSet]],
    per_fold_val: list[list[LogitsSet]] | None,
    models: Sequence[str],
    choice: Choice = Choice(),
    *,
    alpha: float | None = None,
    refer: Referral | None = None,
    sets: PredictionSets | None = None,
    per_fold_cal: list[list[LogitsSet]] | None = None,
) -> Selection:
    """The whole of ``fuse.py``'s choice, written nowhere: optional temperatures, the mix by the
    ``choice``'s rule on its grid (or the fixed ``alpha``), the other rules beside it, a
    certified referral threshold and conformal prediction sets per fold.

    The temperatures, the threshold and the sets are fitted on ``per_fold_cal`` (the calibration
    cells of ``--cal-fraction``, which no part of training saw) when given, else on the
    validation cells (which also chose the epoch: not fresh, said in fusion.json)."""
    rule = choice.select
    _check_promises(rule, alpha, per_fold_val, choice.calibrate, refer, sets)
    by = sets.groups(per_fold[0][0].classes) if sets else None  # before any work
    calibrated_on = "calibration" if per_fold_cal is not None else "validation"
    temperatures = None
    if choice.calibrate:
        temperatures, per_fold, per_fold_val, per_fold_cal = _with_member_temperatures(
            per_fold, per_fold_val, per_fold_cal, models
        )
    chosen, others, grid, comparison, description = _mix(per_fold, per_fold_val, models, rule, choice.alphas, alpha)
    fit = per_fold_cal if per_fold_cal is not None else per_fold_val
    fused_temperature = fused_temperatures(fit, chosen) if temperatures else None
    settings = FusionSettings(
        models=list(models),
        folds=[sets[0].fold for sets in per_fold],
        weights_per_fold=[list(w) for w in chosen],
        rule=description,
        select=rule,
        alphas=choice.alphas,
        inputs=[s.source for sets in per_fold for s in sets],
        input_digests=[file_sha256(Path(s.source)) for sets in per_fold for s in sets],
        weights=list(chosen[0]) if alpha is not None or rule == "test" else None,
        selection_comparison=comparison,
    )
    if temperatures:
        settings.temperatures = {
            "models": list(models),
            "per_fold": temperatures,
            "fused_per_fold": fused_temperature,
            "fitted_on": f"each fold's {calibrated_on} logits",
        }
    # The promises are certified on the probabilities prediction computes: with temperatures,
    # the fused logits divided by their own temperature too.
    shipped = [[w / t for w in ws] for ws, t in zip(chosen, fused_temperature)] if fused_temperature else chosen
    _promises(settings, per_fold, fit, per_fold_cal, shipped, refer, sets, by, calibrated_on)
    return Selection(settings, per_fold, per_fold_val, per_fold_cal, grid, others)
