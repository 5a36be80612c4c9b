"""The numbers of an evaluation (Sec. 3 of the fusion paper): report.json's metrics per model and
fold, the paired tests between models, calibration before and after, and Table 2 (the ablation)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core import calibration, fusion, metrics
from ..core.errors import FusionError
from ..core.logits import LogitsSet, align, pooled
from ..data import splits
from ..store import fusion_folder, run_folder
from .report import fmt, p_value


def training_sizes(folds: Sequence[LogitsSet], held_out: Sequence[Sequence[LogitsSet] | None] = ()) -> list[int]:
    """The cells each fold's model learned from: every tested cell (each is tested once over the
    folds) but its own test fold and the fold's validation and calibration cells (``held_out``:
    those logits per fold, when known)."""
    total = sum(len(f.labels) for f in folds)
    sizes = [total - len(f.labels) for f in folds]
    for sets in held_out:
        if sets is not None and [s.fold for s in sets] == [f.fold for f in folds]:
            sizes = [size - len(s.labels) for size, s in zip(sizes, sets)]
    return sizes


def test_train_ratio(folds: Sequence[LogitsSet], train_sizes: Sequence[int]) -> float | None:
    """Nadeau–Bengio's n_test / n_train (means over the folds); None when no cell trained."""
    train = float(np.mean(train_sizes))
    return float(np.mean([len(f.labels) for f in folds])) / train if train > 0 else None


def evaluate_model(folds: Sequence[LogitsSet], train_sizes: Sequence[int] | None = None) -> dict:
    """``aggregate`` (all folds' predictions together), ``folds`` and ``summary`` of one model
    (the summary's corrected intervals use ``train_sizes``, default :func:`training_sizes`)."""
    labels, logits = pooled(folds)
    per_fold = [metrics.fold_metrics(f.labels, f.logits) for f in folds]
    keys = ["accuracy", "f1_weighted", "f1_macro", "auroc_micro", "auprc_micro"]
    ratio = test_train_ratio(folds, train_sizes if train_sizes is not None else training_sizes(folds))
    return {
        "aggregate": metrics.summarize(labels, logits, folds[0].classes),
        "folds": {key: [row[key] for row in per_fold] for key in keys} | {"fold": [f.fold for f in folds]},
        "summary": {key: metrics.mean_std_ci([row[key] for row in per_fold], test_train_ratio=ratio) for key in keys},
    }


def compare_models(
    models: dict[str, Sequence[LogitsSet]], evaluated: dict[str, dict], train_sizes: dict[str, list[int]] | None = None
) -> list[dict]:
    """Paired tests for every pair of models tested on the same samples (Table 6, McNemar beyond);
    the corrected t-test's n_train is model A's ``train_sizes`` (default :func:`training_sizes`)."""
    names = list(models)
    tests = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if [f.fold for f in models[a]] != [f.fold for f in models[b]]:
                continue
            try:
                pairs = [align([x, y]) for x, y in zip(models[a], models[b])]
            except FusionError:
                continue  # different samples: no paired test
            labels = np.concatenate([x.labels for x, _ in pairs])
            predicted_a = np.concatenate([x.logits for x, _ in pairs]).argmax(1)
            predicted_b = np.concatenate([y.logits for _, y in pairs]).argmax(1)
            scores_a, scores_b = evaluated[a]["folds"]["f1_weighted"], evaluated[b]["folds"]["f1_weighted"]
            paired = metrics.paired_tests(scores_a, scores_b)
            sizes = (train_sizes or {}).get(a) or training_sizes(models[a])
            test_size = len(labels) / len(pairs)
            corrected = metrics.corrected_resampled_t_test(scores_a, scores_b, test_size, float(np.mean(sizes)))
            tests.append(
                {
                    "a": a,
                    "b": b,
                    "metric": "f1_weighted",
                    **paired,
                    **corrected,
                    "mcnemar_p": metrics.mcnemar_p(labels, predicted_a, predicted_b),
                }
            )
    return tests


HONEST_SELECTIONS = {
    "val": "a chosen per fold on its validation logits",
    "nested": "a chosen per fold on the other folds",
}


def headline(report: dict, select: str | None) -> dict | None:
    """The fusion row to present as the result: one whose weight never saw its test fold.

    ``select`` is the rule of fuse.py's chosen fusion (``fusion``); with the paper's ``test`` rule
    the ``fusion_val`` (else ``fusion_nested``) row fuse.py also writes is the headline. ``vs``:
    the corrected resampled t-test and McNemar p against each member. None without such a row."""
    models = report["models"]
    if select in HONEST_SELECTIONS and "fusion" in models:
        key, rule = "fusion", select
    else:
        key, rule = next(((f"fusion_{r}", r) for r in HONEST_SELECTIONS if f"fusion_{r}" in models), (None, None))
    if key is None:
        return None
    versus = {}
    for test in report["tests"]:
        if key in (test["a"], test["b"]):
            member = test["b"] if test["a"] == key else test["a"]
            if not member.startswith("fusion"):
                versus[member] = {"p_corrected_t": test["corrected_t_p"], "p_mcnemar": test["mcnemar_p"]}
    return {"fusion": key, "selection": HONEST_SELECTIONS[rule], "vs": versus}


def calibration_of(
    folds: Sequence[LogitsSet], val_folds: Sequence[LogitsSet] | None = None, shipped: Sequence[float] | None = None
) -> dict:
    """NLL, Brier, ECE and AURC of the pooled test logits, before and after temperature scaling:
    with ``shipped`` (the fusion's temperatures from fusion.json: what --predict applies) those,
    else (given each fold's validation logits) a T fitted per fold on validation only."""
    labels, logits = pooled(folds)
    block = {
        "before": calibration.calibration_scores(logits, labels),
        "aurc_before": calibration.aurc(calibration.probabilities_of(logits), labels),
    }
    block |= {"after": None, "aurc_after": None, "temperature_per_fold": None, "intervals": None}
    temperatures = list(shipped) if shipped is not None else None
    if temperatures is None and val_folds is not None and [v.fold for v in val_folds] == [f.fold for f in folds]:
        try:
            temperatures = [calibration.fit_temperature(v.logits, v.labels) for v in val_folds]
        except calibration.CalibrationError as error:  # the report shows no "after" rather than stopping
            block["not_fitted"] = str(error)
    if temperatures is not None:
        scaled = np.concatenate([f.logits / t for f, t in zip(folds, temperatures)])
        block |= {
            "after": calibration.calibration_scores(scaled, labels),
            "aurc_after": calibration.aurc(calibration.probabilities_of(scaled), labels),
            "intervals": calibration.paired_bootstrap(logits, scaled, labels),
            "temperature_per_fold": temperatures,
        }
    return block


def build_report(
    models: dict[str, Sequence[LogitsSet]],
    val_models: dict[str, Sequence[LogitsSet]] | None = None,
    shipped: dict[str, Sequence[float]] | None = None,
    cal_models: dict[str, Sequence[LogitsSet]] | None = None,
    select: str | None = None,
) -> dict:
    """report.json: ``classes``, ``models`` {name: aggregate/folds/summary/calibration}, ``tests``.

    ``val_models``: the validation logits of those models that have them, for calibration;
    ``shipped``: per model, temperatures that prediction applies (the fusion's), used as they are;
    ``cal_models``: calibration logits (``train.py --cal-fraction``), which no model trained on;
    ``select``: fusion.json's rule for the ``fusion`` row (for the leak-free ``headline``).
    """
    val_models, shipped, cal_models = val_models or {}, shipped or {}, cal_models or {}
    classes = next(iter(models.values()))[0].classes
    sizes = {
        name: training_sizes(folds, [val_models.get(name), cal_models.get(name)]) for name, folds in models.items()
    }
    evaluated = {
        name: evaluate_model(folds, sizes[name])
        | {"calibration": calibration_of(folds, val_models.get(name), shipped.get(name))}
        for name, folds in models.items()
    }
    result = {"classes": classes, "models": evaluated, "tests": compare_models(models, evaluated, sizes)}
    return result | {"headline": headline(result, select)}


def held_out_sets(folder: Path, split: str) -> list[LogitsSet] | None:
    """A model's validation (temperature scaling) or calibration logits; None when it has none."""
    try:
        return run_folder.load_fold_sets(folder, split)
    except FusionError:
        return None


def check_comparable(models: dict[str, list[LogitsSet]]) -> None:
    """Every model of one evaluation has the same classes (one data set)."""
    first_name, first = next(iter(models.items()))
    for name, sets in models.items():
        if sets[0].classes != first[0].classes:
            raise FusionError(f"{name} ({sets[0].source}): classes differ from {first_name}; evaluate them separately")


def single_split_note(name: str, sets: Sequence[LogitsSet]) -> str:
    """Why a model with fewer than two test folds has no spread, interval or paired test."""
    if run_folder.is_single_split(sets):
        return f"{name}: one holdout test split ({sets[0].source}), evaluated as a single split: no folds, so no standard deviation, confidence interval or fold-wise paired test"
    return f"{name}: only one fold, so no standard deviation or confidence interval"


def few_groups_notes(groups: dict[int, dict[str, int]]) -> list[str]:
    """A warning for every fold in which a class's test images come from fewer than 2 groups."""
    return [
        f"fold {fold}: the test images of {name} come from {n} group: its scores in that fold rest on one patient"
        for fold, counts in groups.items()
        for name, n in counts.items()
        if name != "all" and n < 2
    ]


@dataclass
class Evaluation:
    """report.json (``result``), the models' test logits per fold, the notes a reader needs, the
    fusion's settings (fusion.json) when a ``fusion`` model has them, the model of Tables 3 and 7
    (``main``) and Table 1 (grid.md) when a fusion folder holds it."""

    result: dict
    models: dict[str, list[LogitsSet]]
    notes: list[str]
    settings: fusion_folder.FusionSettings | None
    main: str
    grid: str | None


def evaluate_folders(folders: dict[str, Path], folds_csv: Path | None = None, main: str | None = None) -> Evaluation:
    """The evaluation of the models in ``folders`` (their test, validation and calibration logits,
    and the fusion's fusion.json when there is one), with notes on single splits and, from
    ``folds_csv``, on classes whose test images in a fold come from one patient. ``main``: the
    model of Tables 3 and 7 (default: the fusion when there is one, else the first)."""
    if not folders:
        raise FusionError("no logits found; train with train.py (and fuse with fuse.py) first")
    main = main or ("fusion" if "fusion" in folders else next(iter(folders)))
    if main not in folders:
        raise FusionError(f"--main {main}: not among {', '.join(folders)}")
    models = {name: run_folder.load_fold_sets(folder) for name, folder in folders.items()}
    check_comparable(models)
    notes = [single_split_note(name, sets) for name, sets in models.items() if len(sets) < 2]
    held_out = {
        split: {name: sets for name, folder in folders.items() if (sets := held_out_sets(folder, split)) is not None}
        for split in ("val", "cal")
    }
    fused = folders.get("fusion")
    settings = (
        fusion_folder.read_fusion_settings(fused)
        if fused is not None and (fused / run_folder.FUSION_JSON).is_file()
        else None
    )
    if settings is not None:  # the members' logits it was fused from must still be the ones on disk
        settings.check_inputs(fused.parent)
    shipped = {"fusion": settings.fused_temperatures()} if settings and settings.fused_temperatures() else None
    result = build_report(
        models, held_out["val"], shipped, held_out["cal"], settings.select if settings is not None else None
    )
    if folds_csv is not None and folds_csv.is_file():
        groups = splits.groups_per_fold(folds_csv)
        if groups is not None:
            result["groups_per_fold"] = groups
            notes += few_groups_notes(groups)
    return Evaluation(result, models, notes, settings, main, fusion_folder.grid_markdown(list(folders.values())))


def ablation_models(runs: Path, alphas: Sequence[float]) -> dict[str, list[LogitsSet]]:
    """Table 2's models of one run root, per fold: each backbone, and for two or more their
    fusion at a = 0.5, at the a* tuned on these test folds (the paper's rule) and, when the runs
    kept their validation logits, with each fold's weights chosen on them (``fusion val``)."""
    models = {name: path for name, path in run_folder.discover_models(runs).items() if not name.startswith("fusion")}
    if not models:
        raise fusion.FusionError(
            f"--ablation {runs}: no trained models (fold*/test_logits.npz) there; check the folder"
        )
    table = {name: run_folder.load_fold_sets(path) for name, path in models.items()}
    if len(models) >= 2:
        per_fold = run_folder.collect_folds(runs, list(models)[:2])
        tuned = fusion.grid_search(per_fold, alphas).best
        chosen = {"fusion a=0.5": [(0.5, 0.5)] * len(per_fold), f"fusion a*={tuned[0]:.1f}": [tuned] * len(per_fold)}
        try:
            chosen["fusion val"] = fusion.validation_selection(
                run_folder.collect_folds(runs, list(models)[:2], "val"), alphas
            )
        except FusionError:  # runs without validation logits
            pass
        for label, weights in chosen.items():
            table[label] = [
                replace(sets[0], logits=fusion.fuse([s.logits for s in sets], w)) for sets, w in zip(per_fold, weights)
            ]
    return table


def ablation_rows(settings: dict[str, Path], alphas: Sequence[float], against: str = "first") -> list[list[str]]:
    """Table 2 over named run roots: every model's accuracy and F1 scores, and for each setting
    after the first, McNemar's exact test against the same model of the first setting (``against``
    "first") or of the setting before it ("previous": each row of an ablation that adds one
    choice at a time) on the same cells (pooled over the folds, then the folds where it is below
    0.05): a one-seed difference with p >= 0.05 is no evidence."""
    tables = {setting: ablation_models(root, alphas) for setting, root in settings.items()}
    names = list(tables)
    rows = []
    for position, (setting, models) in enumerate(tables.items()):
        reference_name = names[0] if against == "first" else names[max(position - 1, 0)]
        for name, folds in models.items():
            agg = metrics.summarize(*pooled(folds), folds[0].classes)
            row = [setting, name, fmt(agg["accuracy"]), fmt(agg["f1_weighted"]), fmt(agg["f1_macro"])]
            reference = tables[reference_name].get(_same_model(name, tables[reference_name]))
            row += ["-", "-"] if setting == reference_name or reference is None else _mcnemar_cells(folds, reference)
            rows.append(row)
    return rows


def _same_model(name: str, models: dict[str, list[LogitsSet]]) -> str | None:
    """The reference's row for ``name`` (a tuned fusion matches the tuned fusion, whatever its a*)."""
    if name in models:
        return name
    return next((other for other in models if name.startswith("fusion a*") and other.startswith("fusion a*")), None)


def _mcnemar_cells(folds: Sequence[LogitsSet], reference: Sequence[LogitsSet]) -> list[str]:
    """The pooled McNemar p and the folds whose own p is below 0.05 (with the sign of the change)."""
    if [f.fold for f in folds] != [r.fold for r in reference]:
        return ["n/a (other folds)", "-"]
    try:
        pairs = [align([r, f]) for f, r in zip(folds, reference)]
    except FusionError:
        return ["n/a (other cells)", "-"]
    labels = np.concatenate([r.labels for r, _ in pairs])
    before = np.concatenate([r.logits.argmax(1) for r, _ in pairs])
    after = np.concatenate([f.logits.argmax(1) for _, f in pairs])
    significant = []
    for r, f in pairs:
        p = metrics.mcnemar_p(r.labels, r.logits.argmax(1), f.logits.argmax(1))
        if p < 0.05:
            change = (f.logits.argmax(1) == f.labels).sum() - (r.logits.argmax(1) == r.labels).sum()
            significant.append(f"{f.fold} ({'+' if change > 0 else '-'})")
    return [p_value(metrics.mcnemar_p(labels, before, after)).removeprefix("= "), ", ".join(significant) or "none"]
