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
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .calibration import TEMPERATURE_BOUNDS, fit_temperature
from .errors import FusionError  # noqa: F401 (re-exported: callers catch fusion.FusionError)
from .run_folder import LogitsSet, load_logits, save_logits  # noqa: F401 (re-exported: callers use fusion.load_logits)
from .metrics import fold_metrics, weighted_f1
from .output_folder import MANIFEST_NAME, verify_folder

def align(sets: Sequence[LogitsSet]) -> list[LogitsSet]:
    """Reorder every set to the first one's sample order, joining on ``paths``.

    Refuses sets whose classes differ, whose samples differ, or whose labels disagree.
    """
    reference = sets[0]
    order = {p: i for i, p in enumerate(reference.paths)}
    aligned = [reference]
    for other in sets[1:]:
        if other.classes != reference.classes:
            raise FusionError(f"{other.source}: classes differ from {reference.source}; both must be trained on the same class list")
        if len(other.paths) != len(reference.paths) or set(other.paths) != set(order):
            raise FusionError(f"{other.source}: holds other samples than {reference.source}; were both trained on the same folds.csv?")
        position = np.argsort([order[p] for p in other.paths])
        moved = LogitsSet(other.logits[position], other.labels[position], other.paths[position], other.classes, other.arch, other.fold, other.source)
        if not np.array_equal(moved.labels, reference.labels):
            raise FusionError(f"{other.source}: labels differ from {reference.source} for the same images")
        if other.split and reference.split and other.split != reference.split:
            raise FusionError(
                f"{other.source}: fold {other.fold} learned from other images than {reference.source} "
                "(folds.csv or the data changed between them); retrain one of them on the same folds.csv"
            )
        aligned.append(moved)
    return aligned


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
        raise FusionError(f"--alphas {','.join(f'{a:g}' for a in values)}: no {num_models} of these weights sum to 1; use a grid such as 0:1:0.1")
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


def score_grid(per_fold: Sequence[Sequence[LogitsSet]], grid: Sequence[tuple[float, ...]]) -> tuple[np.ndarray, np.ndarray]:
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


def validation_selection(per_fold_val: Sequence[Sequence[LogitsSet]], alphas: Sequence[float]) -> list[tuple[float, ...]]:
    """For each fold, the weights that are best on that fold's validation logits (no use of its test images)."""
    grid = simplex_grid(len(per_fold_val[0]), alphas)
    chosen = []
    for sets in per_fold_val:
        _, f1 = score_grid([sets], grid)
        chosen.append(select_best({w: s for w, s in zip(grid, f1[:, 0])}))
    return chosen


MIN_CALIBRATION_IMAGES = 10


def fit_temperatures(per_fold_val: Sequence[Sequence[LogitsSet]], names: Sequence[str] | None = None) -> list[list[float]]:
    """Per fold, each model's temperature, fitted on that fold's *validation* logits only.

    A fold whose validation set is too small or holds one class cannot calibrate (the fit
    runs to a bound of its search): refused, naming the fold."""
    temperatures = []
    for sets in per_fold_val:
        labels = sets[0].labels
        if len(labels) < MIN_CALIBRATION_IMAGES or len(np.unique(labels)) < 2:
            raise FusionError(
                f"--calibrate: fold {sets[0].fold} validates on {len(labels)} images of {len(np.unique(labels))} class(es); "
                f"a temperature needs at least {MIN_CALIBRATION_IMAGES} images of two or more classes (a larger --val-fraction, or leave --calibrate out)"
            )
        fold = [fit_temperature(s.logits, s.labels) for s in sets]
        for name, t in zip(names or [s.source for s in sets], fold):
            if not TEMPERATURE_BOUNDS[0] * 1.01 < t < TEMPERATURE_BOUNDS[1] / 1.01:
                raise FusionError(f"--calibrate: fold {sets[0].fold}, {name}: the temperature ran to the bound of its search ({t:.3g}); "
                                  "its validation logits cannot calibrate it (all right or all wrong with growing confidence); leave --calibrate out")  # fmt: skip
        temperatures.append(fold)
    return temperatures


def with_temperatures(per_fold: Sequence[Sequence[LogitsSet]], temperatures: Sequence[Sequence[float]]) -> list[list[LogitsSet]]:
    """Every model's logits divided by its temperature of that fold (calibrated before fusing)."""
    return [[replace(s, logits=(s.logits / np.float32(t)).astype(np.float32)) for s, t in zip(sets, temps)] for sets, temps in zip(per_fold, temperatures)]


def evaluate_choice(per_fold: Sequence[Sequence[LogitsSet]], chosen: Sequence[tuple[float, ...]]) -> dict:
    """Fold-wise test metrics of per-fold weight choices, and their means."""
    rows = [fold_metrics(sets[0].labels, fuse([s.logits for s in sets], w)) for sets, w in zip(per_fold, chosen)]
    return {key: float(np.mean([r[key] for r in rows])) for key in ("accuracy", "f1_weighted", "f1_macro")}


def load_settings(folder: Path) -> dict:
    """``folder/fusion.json``, as fuse.py wrote it (models, folds, weights, temperatures, referral),
    after checking the folder against its manifest."""
    path = folder / "fusion.json"
    verify_folder(folder)
    if not path.is_file():
        raise FusionError(f"{path}: not found; run python fuse.py --grid first")
    return json.loads(path.read_text())


_FUSION_FILE = re.compile(r"(fusion\.json|grid\.(csv|md)|([a-z]+/)?fold\d+(_val)?_logits\.npz)")


def legacy_fusion_files(folder: Path) -> set[str]:
    """The files of a fusion folder written before manifests (what a new fuse.py may replace)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and _FUSION_FILE.fullmatch(p.relative_to(folder).as_posix())}


def prediction_weights(settings: dict, folds: Sequence[int]) -> list[list[float]]:
    """From fusion.json's ``settings``, the weights each fold's pair is fused with at prediction:
    that fold's own choice (the same a* for all with the paper's rule; per fold with ``--select
    val|nested``), divided by each member's temperature of that fold when calibrated. With
    ``--fold all`` the folds' fused logits are then averaged."""
    position = {k: i for i, k in enumerate(settings["folds"])}
    temperatures = settings.get("temperatures", {}).get("per_fold")
    weights = []
    for k in folds:
        chosen = settings["weights_per_fold"][position[k]]
        scale = temperatures[position[k]] if temperatures else [1.0] * len(chosen)
        weights.append([w / t for w, t in zip(chosen, scale)])
    return weights


def prediction_threshold(settings: dict, folds: Sequence[int]) -> float | None:
    """One fold: its own validation-chosen threshold; all folds (averaged): the one chosen on all validation cells."""
    referral = settings.get("referral")
    if referral is None:
        return None
    if len(folds) == 1:
        return referral["per_fold"][settings["folds"].index(folds[0])]["threshold"]
    return referral["threshold"]


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
            raise FusionError(f"--alphas {text}: start {start:g} is above stop {stop:g}; give start:stop:step with start <= stop")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_GRID_POINTS:
            raise FusionError(f"--alphas {text}: {count} grid points; at most {MAX_GRID_POINTS} (a step of 0.001 on [0, 1])")
        values = [round(start + i * step, 10) for i in range(count)]
    if len(values) > MAX_GRID_POINTS:
        raise FusionError(f"--alphas {text}: {len(values)} values; at most {MAX_GRID_POINTS}")
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise FusionError(f"--alphas {text}: weights must lie in [0, 1]")
    return values


# --------------------------------------------------------------------------- runs on disk


def find_fold_files(runs: Path, arch: str, split: str = "test") -> dict[int, Path]:
    """``<runs>/<arch>/fold<k>/<split>_logits.npz`` by fold number."""
    found = {}
    for path in sorted((runs / arch).glob(f"fold*/{split}_logits.npz")):
        suffix = path.parent.name.removeprefix("fold")
        if suffix.isdigit():
            found[int(suffix)] = path
    return found


def collect_folds(runs: Path, archs: Sequence[str], split: str = "test") -> list[list[LogitsSet]]:
    """For every fold, the aligned logits sets of all ``archs``; every model must have every fold."""
    files = {arch: find_fold_files(runs, arch, split) for arch in archs}
    for arch, by_fold in files.items():
        if not by_fold:
            raise FusionError(f"{runs / arch}: no fold*/{split}_logits.npz; train it first (python train.py --fold all --arch {arch})")
    all_folds = sorted(set().union(*[set(f) for f in files.values()]))
    for arch, by_fold in files.items():
        missing = [k for k in all_folds if k not in by_fold]
        if missing:
            raise FusionError(f"{runs / arch}: fold(s) {missing} missing ({split}_logits.npz); train them or leave that model out")
    return [align([load_logits(files[arch][k]) for arch in archs]) for k in all_folds]


def grid_table(result: GridResult, names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Table 1 as header + rows: weights, per-fold accuracy and weighted F1, means."""
    weight_columns = ["a"] if len(names) == 2 else [f"w_{n}" for n in names]
    header = weight_columns + [f"fold{k}_{m}" for k in result.folds for m in ("acc", "f1w")] + ["mean_acc", "mean_f1w"]
    rows = []
    for i, weights in enumerate(result.weights):
        shown = [f"{weights[0]:.2f}"] if len(names) == 2 else [f"{w:.2f}" for w in weights]
        cells = [f"{v:.4f}" for j in range(len(result.folds)) for v in (result.accuracy[i, j], result.f1_weighted[i, j])]
        rows.append(shown + cells + [f"{result.accuracy[i].mean():.4f}", f"{result.f1_weighted[i].mean():.4f}"])
    return header, rows


SINGLE_SPLIT_FOLDER = "holdout"  # train.py's run folder of a train/val/test split (method B)


def is_single_split(sets: Sequence[LogitsSet]) -> bool:
    """True for the one test set of a holdout run, which has no fold statistics."""
    return len(sets) == 1 and Path(sets[0].source).parent.name == SINGLE_SPLIT_FOLDER


def fused_fold_files(folder: Path, split: str = "test") -> list[Path]:
    """fuse.py's files in ``folder``: ``fold<k>_logits.npz`` (test) or ``fold<k>_val_logits.npz`` (validation)."""
    pattern = re.compile(r"fold\d+_logits\.npz" if split == "test" else rf"fold\d+_{split}_logits\.npz")
    return sorted(p for p in folder.glob("fold*.npz") if pattern.fullmatch(p.name)) if folder.is_dir() else []


def load_fold_sets(folder: Path, split: str = "test") -> list[LogitsSet]:
    """All folds of one model: ``fold<k>/test_logits.npz`` (train.py), ``fold<k>_logits.npz`` (fuse.py),
    or the one split of a holdout run: ``holdout/test_logits.npz``, or the run folder itself.
    ``split="val"``: the validation logits of the same runs."""
    paths = (
        sorted(folder.glob(f"fold*/{split}_logits.npz")) or fused_fold_files(folder, split)
        or sorted(folder.glob(f"{SINGLE_SPLIT_FOLDER}/{split}_logits.npz")) or sorted(folder.glob(f"{split}_logits.npz"))
    )  # fmt: skip
    if not paths:
        raise FusionError(f"{folder}: no fold*/{split}_logits.npz, fused fold logits or {SINGLE_SPLIT_FOLDER}/{split}_logits.npz files")
    if (folder / MANIFEST_NAME).is_file():  # a fusion folder: its files must be the ones fuse.py wrote together
        verify_folder(folder)
    sets = sorted((load_logits(p) for p in paths), key=lambda s: s.fold)
    for s in sets[1:]:
        if s.classes != sets[0].classes:
            raise FusionError(f"{s.source}: classes differ from {sets[0].source}")
    return sets


def discover_models(runs: Path) -> dict[str, Path]:
    """Every model folder under ``runs`` that holds fold (or holdout) logits; the fusion, then its
    other weight selections (``fusion_val``, ``fusion_nested``, ...) last."""
    def has_logits(folder: Path) -> bool:
        return any(folder.glob("fold*/test_logits.npz")) or (folder / SINGLE_SPLIT_FOLDER / "test_logits.npz").is_file()

    found = {p.name: p for p in sorted(runs.iterdir()) if p.is_dir() and p.name != "fusion" and has_logits(p)} if runs.is_dir() else {}
    if fused_fold_files(runs / "fusion"):
        found["fusion"] = runs / "fusion"
        for selection in sorted(p for p in (runs / "fusion").iterdir() if p.is_dir() and fused_fold_files(p)):
            found[f"fusion_{selection.name}"] = selection  # fuse.py's other weight selections
    return found
