"""MODEL_CARD.md, written with every export: what the deployed model is for, what it learned
from, how well it did on cells it never trained on (with intervals), its decision rules, its
limits, and what made it."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..core import metrics
from ..core.logits import LogitsSet, pooled
from ..core.selective import Certificate
from ..data import splits
from ..page import markdown_table, markdown_text
from ..reporting.report import majority_verdict
from ..runtime import git_commit
from ..store.fusion_folder import FusionSettings
from ..store.run_folder import data_root_of_run, fold_folder

MODEL_CARD = "MODEL_CARD.md"
INTENDED_USE = (
    "Research use: classifying single-cell sperm morphology images into the classes below, and "
    "estimating a sample's class fractions with `fuse.py --samples`. It is not a diagnostic device: "
    "a person reviews the referred cells, and a lab validates the model on its own cells "
    "(stain, microscope, magnification) before relying on it."
)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion (accuracy, recall)."""
    if trials == 0:
        return math.nan, math.nan
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    # at 0 or all successes the bound is exactly 0 or 1 (floating point leaves 1e-16 off)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (
        1.0 if successes == trials else min(1.0, centre + half)
    )


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _training_record(runs: Path, model: str, fold: int) -> dict:
    try:
        return json.loads((fold_folder(runs / model, fold) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _per_class_rows(confusion: np.ndarray, classes: Sequence[str]) -> list[list[object]]:
    """Per class: test cells, sensitivity with its 95 % Wilson interval, specificity."""
    specificity = metrics.specificity_per_class(confusion)
    rows = []
    for c, name in enumerate(classes):
        support = int(confusion[c].sum())
        recall_low, recall_high = wilson_interval(int(confusion[c, c]), support)
        recall = confusion[c, c] / support if support else math.nan
        interval = f"{_percent(recall_low)} – {_percent(recall_high)}"
        rows.append([name, support, _percent(recall), interval, _percent(specificity[c])])
    return rows


def _split_line(record: dict) -> str:
    groups = record.get("group_pattern") or record.get("group_column")
    return (
        f"- split: {record.get('num_folds', '?')}-fold cross-validation ({record.get('split', '?')}), "
        f"validation fraction {record.get('val_fraction', '?')}, calibration fraction {record.get('cal_fraction', 0)}"
        + (f", groups from {markdown_text(groups)}" if record.get("group_pattern") else "")
    )


def _decision_lines(decision: dict | None, field: str = "decision") -> list[str]:
    """The certified rules model.json carries under ``field``, in words (or that there are none)."""
    if not decision:
        return ["- none: every cell gets its most probable class (no certified referral or prediction sets)"]
    lines = []
    if "referral" in decision:
        certificate = Certificate.from_dict(decision["referral"])
        lines.append(
            "- referral: every cell goes to a person (no threshold could be certified on the held-out cells)"
            if certificate.refers_all
            else f"- referral: cells with confidence below {certificate.threshold:.4f} go to a person; the accepted "
            f"cells' accuracy is at least {certificate.target_accuracy} with probability {1 - certificate.delta:.2f} "
            f"(certified on held-out cells; model.json's `{field}.referral`)"
        )
    if "prediction_sets" in decision:
        lines.append(
            "- prediction sets: conformal sets that contain the true class with the promised probability "
            f"(model.json's `{field}.prediction_sets`)"
        )
    return lines


def _accuracy_line(runs: Path, tested: Sequence[LogitsSet], folds: Sequence[int]) -> str:
    """The pooled test accuracy and what its interval describes (review science-v0.3, m4): a
    patient bootstrap when folds.csv names each cell's group, else Wilson's interval, which
    treats every cell as an independent trial."""
    labels, logits = pooled(tested)
    correct = logits.argmax(axis=1) == labels
    accuracy = _percent(correct.mean())
    whose = (
        "The fused pair of the fold on its test cells"
        if len(folds) == 1
        else f"Each fold's fused pair on that fold's test cells, pooled over folds {', '.join(map(str, folds))} "
        "(these figures describe the per-fold pairs; their exported average has no test cells of its own: each "
        "fold's test cells trained the other folds)"
    )
    group_of = splits.group_of_path(runs / "folds.csv")
    paths = [p for t in tested for p in t.paths]
    if group_of is not None and all(p in group_of for p in paths):
        groups = [group_of[p] for p in paths]
        low, high = metrics.group_bootstrap_interval(correct, groups)
        interval = (
            f"95 % bootstrap interval over {len(set(groups))} patients/groups, {_percent(low)} – {_percent(high)}"
        )
    else:
        low, high = wilson_interval(int(correct.sum()), len(correct))
        interval = (
            f"95 % Wilson interval {_percent(low)} – {_percent(high)}, which treats the cells as independent: with "
            "several cells per patient the true interval is wider (train with groups for a patient bootstrap)"
        )
    return f"{whose} ({len(labels)} cells, never trained on): accuracy {accuracy} ({interval})."


def _majority_line(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> str:
    """The pair against always answering the most frequent class of the same cells, with its balanced accuracy."""
    aggregate = {
        "accuracy": float((predicted == labels).mean()),
        "majority": metrics.against_majority(labels, predicted, classes),
    }
    recall = metrics.per_class_scores(metrics.confusion_counts(labels, predicted, len(classes)))[1]
    present = np.bincount(labels, minlength=len(classes)) > 0
    return f"Against the majority class: {majority_verdict('the fused pair', aggregate)}. Balanced accuracy (mean recall over classes): {recall[present].mean():.4f}."


def model_card(
    runs: Path,
    settings: FusionSettings,
    folds: Sequence[int],
    tested: Sequence[LogitsSet],
    img_size: int,
    decision: dict | None,
    command: str,
) -> str:
    """The card's Markdown. ``tested``: the fused test logits of ``folds`` (each fold's pair on
    the cells it never trained on)."""
    labels, logits = pooled(tested)
    classes = tested[0].classes
    confusion = metrics.confusion_counts(labels, logits.argmax(axis=1), len(classes))
    record = _training_record(runs, settings.models[0], folds[0])
    data_root = str(data_root_of_run(fold_folder(runs / settings.models[0], folds[0]))) if record else "unknown"
    averaged = "one fold" if len(folds) == 1 else "their fused logits averaged"
    lines = [
        "# Model card",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Model",
        "",
        f"- members: {markdown_text(', '.join(settings.models))}; folds {', '.join(map(str, folds))} ({averaged})",
        f"- fusion: {settings.rule}; weights per fold {settings.prediction_weights(folds)} (divided by temperatures when calibrated)",
        f"- input: letterboxed RGB, {img_size} x {img_size} px (model.json describes the preprocessing)",
        "",
        "## Data",
        "",
        f"- trained on: {markdown_text(data_root)}",
        f"- classes ({len(classes)}): {markdown_text(', '.join(classes))}",
        _split_line(record),
        "",
        "## Performance on held-out cells",
        "",
        _accuracy_line(runs, tested, folds),
        "",
        markdown_text(_majority_line(labels, logits.argmax(axis=1), classes)),
        "",
        markdown_table(
            ["class", "test cells", "sensitivity (recall)", "95 % interval", "specificity"],
            _per_class_rows(confusion, classes),
        ),
    ]
    if settings.select == "test":
        lines += [
            "Note: the fusion weight was chosen on these test folds (the paper's rule), so these figures are "
            "slightly optimistic; `fuse.py --grid --select val` avoids it.",
            "",
        ]
    lines += ["## Decision rules", "", *_decision_lines(decision)]
    lines += [
        "",
        "## Limits",
        "",
        f"- trained at {img_size} px on the data above; cells from another lab, stain or microscope need a local check",
        "- one label per cell: a cell with several defects is counted in one class",
    ]
    if "spermfuse" in data_root and "sperm18" in data_root:
        lines.append("- trained on procedural (synthetic) images: not for real micrographs")
    commit = git_commit(short=True)
    lines += [
        "",
        "## Provenance",
        "",
        f"- written by: {markdown_text(command)}",
        f"- spermfuse {__version__}" + (f", commit {commit}" if commit else ""),
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    return "\n".join(lines)


def _fp32_convolutions_line(chosen: dict | None) -> list[str]:
    """The card's line on the convolutions an int8 model leaves in fp32 (model.json's
    ``int8.fp32_convolutions``); none for an export written before they were recorded."""
    if not chosen:
        return []
    extra = len(chosen["kept_fp32"]) - chosen["kept_by_rule"]
    line = (
        f"- convolutions kept in fp32: {len(chosen['kept_fp32'])} of {chosen['convolutions']} "
        f"({chosen['kept_by_rule']} stems and squeeze-and-excitation"
    )
    if chosen["search"]:
        more = f"the {extra} most sensitive" if extra else "no more"
        line += (
            f", and {more}: top-1 agreement with fp32 {_percent(chosen['search'][-1][1])} on the calibration cells in "
            f"their 8 orientations, for {_percent(chosen['target_agreement'])} asked (stricter than the test guard: "
            "calibration cells flip less than test cells)"
        )
    return [line + ")"]


def reduced_precision_card_section(precision: str, block: dict) -> str:
    """MODEL_CARD.md's section on the int8 or bf16 model (model.json's ``int8`` / ``bf16``): how it
    was made, how it compares with fp32 on test cells, and its own certified rules."""
    test, calibration = block["test"], block["calibration"]
    low, high = test["accuracy_change_95"]
    where = "held out from the pair" if test["held_out"] else "not held out (each trained some fold's members)"
    made = block["quantization"] if "quantization" in block else block["runtime"]
    lines = [
        "",
        f"## The {precision} model ({block['file']})",
        "",
        f"- made by: {made} ({calibration['cells']} {calibration['split']} cells of fold(s) "
        f"{', '.join(map(str, calibration['folds']))})",
        *_fp32_convolutions_line(block.get("fp32_convolutions")),
        f"- top-1 agreement with fp32: {_percent(test['top1_agreement_with_fp32'])} of {test['cells']} test cells ({where})",
        f"- accuracy {_percent(test['accuracy'])} (fp32 {_percent(test['accuracy_fp32'])}); change "
        f"{100 * (test['accuracy'] - test['accuracy_fp32']):+.1f} points, 95 % interval [{100 * low:+.1f}, {100 * high:+.1f}], "
        f"McNemar p {test['mcnemar_p']:.3f}",
        "- its decision rules, re-certified on its own probabilities of the same calibration cells "
        f"(model.json's `{precision}.decision`; the fp32 rules above do not apply to it):",
        "",
        *_decision_lines(block.get("decision"), f"{precision}.decision"),
        "",
    ]
    return "\n".join(lines)
