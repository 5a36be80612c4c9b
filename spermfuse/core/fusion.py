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
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .calibration import CalibrationError, fit_temperature
from .errors import FusionError
from .logits import LogitsSet
from .metrics import fold_metrics, weighted_f1

log = logging.getLogger(__name__)


def fuse(logit_list: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of logits, sum_i w_i z_i (Eq. of Sec. 2.5)."""
    if len(logit_list) != len(weights):
        raise ValueError(f"{len(logit_list)} logit arrays but {len(weights)} weights")
    return sum(float(w) * np.asarray(z, dtype=np.float32) for w, z in zip(weights, logit_list))


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
    """Squared distance of fusion ``weights`` from equal weights: the tie-break of :func:`select_best`."""
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


# --------------------------------------------------------------------------- choosing the mix (fuse.py)


def deployed_weights(
    weights: Sequence[float], member_temperatures: Sequence[float] | None = None, fused_temperature: float = 1.0
) -> list[float]:
    """The decision rule as deployed: each member's logits divided by its own temperature, mixed
    with ``weights``, and the mix divided by the fused logits' temperature, folded into one
    weight per member: w_i / (T_i T_fused)."""
    temperatures = member_temperatures or [1.0] * len(weights)
    return [w / (t * fused_temperature) for w, t in zip(weights, temperatures)]


def fused_temperatures(fit: Sequence[Sequence[LogitsSet]], chosen: Sequence[Sequence[float]]) -> list[float]:
    """Per fold, the temperature of the fused logits (members already scaled by their own), fitted on ``fit``."""
    fused = [[replace(sets[0], logits=fuse([s.logits for s in sets], w))] for sets, w in zip(fit, chosen)]
    temperatures = [t for (t,) in fit_temperatures(fused, ["the fused pair"])]
    log.info("fused temperatures per fold: %s", ", ".join(f"{t:.3f}" for t in temperatures))
    return temperatures
