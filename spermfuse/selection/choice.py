"""fuse.py's choice, written nowhere else: the fusion weights by a selection rule on a grid (Sec. 2.5,
and the two honest rules beside the paper's), the optional temperatures, and the promises
certified on the chosen mix (``promises.py``); the flags that ask for each (``Choice``,
``Referral``, ``PredictionSets``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import FusionError
from ..core.files import file_sha256
from ..core.fusion import (
    GridResult,
    deployed_weights,
    evaluate_choice,
    fit_temperatures,
    fused_temperatures,
    grid_search,
    nested_selection,
    validation_selection,
    with_temperatures,
)
from ..core.logits import LogitsSet
from ..data.taxonomy import DEFECT_PART
from ..flags import setting
from ..store import run_folder
from ..store.fusion_folder import FusionSettings, Selection
from .promises import certify_promises

log = logging.getLogger(__name__)


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


def check_weight_flags(alpha: float | None, alphas: str, model_count: int) -> None:
    """Refuse a fixed ``--alpha`` outside [0, 1] or without exactly two models, or an ``--alphas``
    grid that :func:`parse_alphas` refuses: checkable before any logits load."""
    if alpha is None:
        parse_alphas(alphas)
    elif model_count != 2 or not 0.0 <= alpha <= 1.0:
        raise FusionError(f"--alpha {alpha:g}: needs exactly two --models and a value in [0, 1]")


def _mix(per_fold, per_fold_val, models: Sequence[str], rule: str, alphas: str, alpha: float | None):
    """(weights per fold, the other rules' weights by folder, Table 1, the rules' test figures, the rule's description)."""
    if alpha is not None:
        check_weight_flags(alpha, alphas, len(models))
        return [(alpha, 1.0 - alpha)] * len(per_fold), {}, None, None, "fixed"
    by_rule, comparison, grid = _grid_rules(per_fold, per_fold_val, parse_alphas(alphas), models)
    if by_rule[rule] is None:
        raise FusionError(f"--select {rule}: not possible here (needs val_logits.npz / two or more folds)")
    others = {RULES[name][0]: c for name, c in by_rule.items() if c and name != rule}
    return by_rule[rule], others, grid, comparison, RULES[rule][1]


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
    shipped = (
        [deployed_weights(ws, None, t) for ws, t in zip(chosen, fused_temperature)] if fused_temperature else chosen
    )
    certify_promises(settings, per_fold, fit, per_fold_cal, shipped, refer, sets, by, calibrated_on)
    return Selection(settings, per_fold, per_fold_val, per_fold_cal, grid, others)
