"""Reports: Markdown and JSON tables and figures (matplotlib, imported only when drawing)."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from . import calibration, fusion, metrics, run_folder
from .files import atomic_write_bytes
from .errors import FusionError
from .run_folder import LogitsSet, align


def markdown_cell(value: object) -> str:
    """A value as one table cell: a ``|`` or a line break in a class name must not split the row."""
    return str(value).replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_REPORT_FILE = re.compile(r"(report\.(json|md)|ablation\.md|gallery\.md|pointing_game\.(json|md)|[^/]+\.png|gallery/[^/]+\.png)")


def legacy_report_files(folder: Path) -> set[str]:
    """The files of a report folder written before manifests (what a new evaluate.py may replace)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and _REPORT_FILE.fullmatch(p.relative_to(folder).as_posix())}


# --------------------------------------------------------------------------- the evaluation


def pooled(folds: Sequence[LogitsSet]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of all folds together."""
    return np.concatenate([f.labels for f in folds]), np.concatenate([f.logits for f in folds])


def evaluate_model(folds: Sequence[LogitsSet]) -> dict:
    """``aggregate`` (all folds' predictions together), ``folds`` and ``summary`` of one model."""
    labels, logits = pooled(folds)
    per_fold = [metrics.fold_metrics(f.labels, f.logits) for f in folds]
    keys = ["accuracy", "f1_weighted", "f1_macro", "auroc_micro", "auprc_micro"]
    return {
        "aggregate": metrics.summarize(labels, logits, folds[0].classes),
        "folds": {key: [row[key] for row in per_fold] for key in keys} | {"fold": [f.fold for f in folds]},
        "summary": {key: metrics.mean_std_ci([row[key] for row in per_fold]) for key in keys},
    }


def compare_models(models: dict[str, Sequence[LogitsSet]], evaluated: dict[str, dict]) -> list[dict]:
    """Paired tests for every pair of models tested on the same samples (Table 6, McNemar beyond)."""
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
            # Each fold's model trained on the other folds: n_train is the rest of the data (validation included).
            test_size = len(labels) / len(pairs)
            corrected = metrics.corrected_resampled_t_test(scores_a, scores_b, test_size, len(labels) - test_size)
            tests.append({"a": a, "b": b, "metric": "f1_weighted", **paired, **corrected, "mcnemar_p": metrics.mcnemar_p(labels, predicted_a, predicted_b)})
    return tests


def calibration_of(folds: Sequence[LogitsSet], val_folds: Sequence[LogitsSet] | None = None, shipped: Sequence[float] | None = None) -> dict:
    """NLL, Brier, ECE and AURC of the pooled test logits, before and after temperature scaling:
    with ``shipped`` (the fusion's temperatures from fusion.json: what --predict applies) those,
    else (given each fold's validation logits) a T fitted per fold on validation only."""
    labels, logits = pooled(folds)
    block = {"before": calibration.calibration_scores(logits, labels), "aurc_before": calibration.aurc(calibration.probabilities_of(logits), labels)}
    block |= {"after": None, "aurc_after": None, "temperature_per_fold": None, "intervals": None}
    temperatures = list(shipped) if shipped is not None else None
    if temperatures is None and val_folds is not None and [v.fold for v in val_folds] == [f.fold for f in folds]:
        temperatures = [calibration.fit_temperature(v.logits, v.labels) for v in val_folds]
    if temperatures is not None:
        scaled = np.concatenate([f.logits / t for f, t in zip(folds, temperatures)])
        block |= {
            "after": calibration.calibration_scores(scaled, labels),
            "aurc_after": calibration.aurc(calibration.probabilities_of(scaled), labels),
            "intervals": calibration.paired_bootstrap(logits, scaled, labels),
            "temperature_per_fold": temperatures,
        }  # fmt: skip
    return block


def build_report(
    models: dict[str, Sequence[LogitsSet]], val_models: dict[str, Sequence[LogitsSet]] | None = None, shipped: dict[str, Sequence[float]] | None = None,
) -> dict:
    """report.json: ``classes``, ``models`` {name: aggregate/folds/summary/calibration}, ``tests``.

    ``val_models``: the validation logits of those models that have them, for calibration;
    ``shipped``: per model, temperatures that prediction applies (the fusion's), used as they are.
    """
    val_models, shipped = val_models or {}, shipped or {}
    classes = next(iter(models.values()))[0].classes
    evaluated = {name: evaluate_model(folds) | {"calibration": calibration_of(folds, val_models.get(name), shipped.get(name))} for name, folds in models.items()}
    return {"classes": classes, "models": evaluated, "tests": compare_models(models, evaluated)}


def fmt(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report_markdown(report: dict, main: str, grid_markdown: str | None = None, notes: Sequence[str] = ()) -> str:
    """The paper's Tables 1 and 3-7 for ``main`` (and the comparison with the others)."""
    classes, models = report["classes"], report["models"]
    out = ["# spermfuse evaluation\n"]
    out += [f"> {note}\n" for note in notes]
    keys = ["accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "specificity_macro",
            "specificity_weighted", "auroc_macro", "auroc_weighted", "auprc_macro", "auprc_weighted", "ece"]  # fmt: skip
    out.append("## Aggregated over all folds\n")
    out.append(markdown_table(["model"] + keys, [[name] + [fmt(m["aggregate"][k]) for k in keys] for name, m in models.items()]))
    out.append("## Calibration and selective prediction\n")
    out.append(
        "NLL, Brier and ECE (15 bins) of the test logits as they are and after temperature scaling (a T per fold: for a "
        "fusion made with --calibrate the one fusion.json ships and --predict applies, else fitted on that fold's validation logits); "
        "AURC is the area under the risk-coverage curve (lower is better).\n"
    )
    rows = []
    for name, m in models.items():
        c = m["calibration"]
        after = c["after"] or {}
        change = (c.get("intervals") or {}).get("difference", {})
        rows.append([name] + [f"{fmt(c['before'][k])} / {fmt(after.get(k))}" for k in ("nll", "brier", "ece")] + [f"{fmt(c['aurc_before'])} / {fmt(c['aurc_after'])}"]
                    + [", ".join(f"{k} [{v[0]:+.4f}, {v[1]:+.4f}]" for k, v in change.items()) or "n/a"])  # fmt: skip
    out.append(markdown_table(["model", "NLL before / after", "Brier before / after", "ECE before / after", "AURC before / after",
                               "after - before, 95 % paired bootstrap"], rows))  # fmt: skip
    if "groups_per_fold" in report:
        groups = report["groups_per_fold"]
        out.append("## Groups (patients, slides or samples) in each test fold\n")
        out.append(markdown_table(["fold", "groups"] + classes, [[k, g["all"]] + [g.get(c, 0) for c in classes] for k, g in groups.items()]))
    if grid_markdown:
        out.append("## Table 1. Fusion weight grid (per-fold accuracy and weighted F1)\n")
        out.append(grid_markdown)
    per_class = models[main]["aggregate"]["per_class"]
    out.append(f"## Table 3. Per-class results of {main}\n")
    out.append(markdown_table(
        ["class", "precision", "recall", "F1", "specificity", "support"],
        [[c, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), fmt(v["specificity"]), v["support"]] for c, v in per_class.items()],
    ))  # fmt: skip
    out.append("## Table 4. Per-class F1 of every model\n")
    out.append(markdown_table(["class"] + list(models), [[c] + [fmt(m["aggregate"]["per_class"][c]["f1"]) for m in models.values()] for c in classes]))
    out.append("## Table 5. Fold-wise mean, std and Student-t 95 % CI\n")
    rows = []
    for name, m in models.items():
        for key, s in m["summary"].items():
            ci = f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]" if s["ci95"] else "n/a (one fold)"
            rows.append([name, key, fmt(s["mean"]), fmt(s["std"]), ci])
    out.append(markdown_table(["model", "metric", "mean", "std", "95 % CI"], rows))
    if report["tests"]:
        out.append("## Table 6. Paired tests on fold-wise weighted F1 (McNemar on all predictions)\n")
        out.append(paired_tests_caveats(report) + "\n")
        out.append(markdown_table(
            ["A", "B", "paired t p", "corrected t", "corrected t p", "Wilcoxon p", "McNemar p"],
            [[t["a"], t["b"], fmt(t["paired_t_p"]), fmt(t["corrected_t"]), fmt(t["corrected_t_p"]), fmt(t["wilcoxon_p"]), fmt(t["mcnemar_p"])] for t in report["tests"]],
        ))  # fmt: skip
    out.append(f"## Table 7. Most frequent confusions of {main}\n")
    confusions = metrics.top_confusions(models[main]["aggregate"]["confusion"], classes)
    out.append(markdown_table(["true class", "most often predicted as"], [[c, ", ".join(f"{p} ({n})" for p, n in v) or "-"] for c, v in confusions.items()]))
    return "\n".join(out)


def paired_tests_caveats(report: dict) -> str:
    """What Table 6 can and cannot show, from the number of folds and the models present."""
    folds = min(len(m["folds"]["fold"]) for m in report["models"].values())
    lines = [
        "> The corrected resampled t-test (Nadeau & Bengio, 2003) inflates the paired t-test's variance by n_test/n_train, "
        "because the folds' training sets overlap; prefer it to the plain paired t-test, which declares differences significant too easily.",
        f"> With {folds} folds the exact two-sided Wilcoxon signed-rank test cannot give p below "
        f"{metrics.wilcoxon_floor(folds):.4f} (= 2 / 2^{folds}), whatever the difference: a Wilcoxon p above 0.05 here is no evidence of equality."
    ]  # fmt: skip
    if "fusion" in report["models"]:
        lines.append(
            "> `fusion` uses the weights `fuse.py --select` chose (by default the paper's a*, tuned on these test folds: optimistic); "
            "`fusion_val` (a per fold from its validation logits) and `fusion_nested` (from the other folds) are the honest comparisons."
        )
    return "\n>\n".join(lines)


def summary_markdown(report: dict, fusion_settings: run_folder.FusionSettings | None, source: str, environment: str) -> str:
    """The headline figures of one evaluation as Markdown, for a results file a README can embed
    (written by the code, so the README's figures cannot go stale unnoticed)."""
    models = report["models"]
    members = [name for name in models if not name.startswith("fusion_")]  # the honest selections have their own lines below
    keys = ["accuracy", "f1_weighted", "f1_macro", "auroc_macro", "specificity_macro"]
    out = [f"<!-- written by evaluate.py --summary from {source}; {environment} -->\n"]
    out.append(markdown_table(["model"] + keys, [[name] + [fmt(models[name]["aggregate"][k]) for k in keys] for name in members]))
    if fusion_settings and fusion_settings.selection_comparison:
        weights = fusion_settings.weights
        chosen = f"a* = {weights[0]:.1f} (the paper's rule)" if weights else f"per fold ({fusion_settings.rule})"
        means = ", ".join(f"{name} {figures['f1_weighted']:.4f}" for name, figures in fusion_settings.selection_comparison.items())
        out.append(f"Fusion weight: {chosen}. Mean weighted F1 over folds by --select rule (test: the paper's, optimistic): {means}.\n")
    out.append("Per-class F1:\n")
    out.append(markdown_table(["class"] + members, [[c] + [fmt(models[name]["aggregate"]["per_class"][c]["f1"]) for name in members] for c in report["classes"]]))
    out.append("Calibration (before / after temperature scaling: the fusion's shipped temperature, else one fitted on each fold's validation logits) and AURC:\n")
    rows = []
    for name in members:
        c = models[name]["calibration"]
        after = c["after"] or {}
        rows.append([name] + [f"{fmt(c['before'][k])} / {fmt(after.get(k))}" for k in ("nll", "ece")] + [fmt(c["aurc_before"])])
    out.append(markdown_table(["model", "NLL", "ECE", "AURC"], rows))
    return "\n".join(out)


def pointing_game_markdown(result: dict, dependence: float | None = None) -> str:
    """The pointing game per part group next to chance, and the model-dependence check."""
    order = ["head", "neck", "tail", "sperm"]
    names = {"head": "head classes", "neck": "neck classes", "tail": "tail classes", "sperm": "Normal (any part of the sperm)"}
    rows = [
        [names[part], result[part]["images"], f"{result[part]['hit_rate']:.3f}", f"{result[part]['chance']:.3f}", f"{result[part]['hit_rate'] / max(result[part]['chance'], 1e-12):.1f}x"]
        for part in order if part in result
    ]  # fmt: skip
    text = "Pointing game of the fused Grad-CAM (its peak inside the part that carries the defect):\n\n"
    text += markdown_table(["classes", "test images", "hit rate", "chance (part's share of the image)", "hit / chance"], rows)
    if dependence is not None:
        text += f"\nModel dependence: mean Spearman rank correlation between the fused maps before and after re-initialising each member's last stage: {dependence:.3f} (1 would mean the maps ignore what the model learned).\n"
    return text


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> None:
    """Counts and row-normalised confusion matrices side by side."""
    plt = _pyplot()
    matrix = np.asarray(confusion, dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.45 * len(classes))
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 2, size))
    for ax, values, name, fmt_ in ((axes[0], matrix, "counts", "{:.0f}"), (axes[1], normalised, "row-normalised", "{:.2f}")):
        ax.imshow(values, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        peak = values.max() if values.max() > 0 else 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                if values[i, j] > 0:
                    ax.text(j, i, fmt_.format(values[i, j]), ha="center", va="center", fontsize=5, color="white" if values[i, j] > peak / 2 else "black")
    _save(figure, path)


def macro_roc_curve(labels: np.ndarray, logits: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Macro-average one-vs-rest ROC (TPR interpolated on a common FPR grid)."""
    from sklearn.metrics import roc_curve

    probabilities = metrics.softmax(logits.astype(np.float64))
    curves = []
    for c in range(logits.shape[1]):
        truth = labels == c
        if 0 < truth.sum() < len(labels):
            fpr, tpr, _ = roc_curve(truth, probabilities[:, c])
            curves.append(np.interp(grid, fpr, tpr))
    return np.mean(curves, axis=0)


def plot_roc(folds: Sequence[LogitsSet], path: Path, title: str) -> None:
    """Macro ROC per fold, their mean and a +-1 std band (Figure 8 of the paper)."""
    from sklearn.metrics import auc

    plt = _pyplot()
    grid = np.linspace(0, 1, 201)
    curves = np.array([macro_roc_curve(f.labels, f.logits, grid) for f in folds])
    aucs = [auc(grid, c) for c in curves]
    mean = curves.mean(axis=0)
    std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for f, c in zip(folds, curves):
        ax.plot(grid, c, lw=0.7, alpha=0.5, label=f"fold {f.fold}")
    spread = f" +- {np.std(aucs, ddof=1):.4f}" if len(aucs) > 1 else ""
    ax.plot(grid, mean, color="black", lw=2, label=f"mean macro AUROC {np.mean(aucs):.4f}{spread}")
    ax.fill_between(grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color="grey", alpha=0.3, label="+-1 std")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: macro ROC over folds")
    ax.legend(loc="lower right", fontsize=7)
    _save(figure, path)


def plot_precision_recall(labels: np.ndarray, logits: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """One-vs-rest precision-recall curve of every class, with its average precision."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    probabilities = metrics.softmax(logits.astype(np.float64))
    figure, ax = plt.subplots(figsize=(7, 5.5))
    colours = plt.get_cmap("tab20")
    for c, name in enumerate(classes):
        truth = labels == c
        if truth.any():
            precision, recall, _ = precision_recall_curve(truth, probabilities[:, c])
            ax.plot(recall, precision, lw=1, color=colours(c % 20), label=f"{name} ({average_precision_score(truth, probabilities[:, c]):.2f})")
    ax.set(xlabel="recall", ylabel="precision", title=f"{title}: precision-recall (AP per class)", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    _save(figure, path)


def plot_f1_comparison(report: dict, path: Path) -> None:
    """Per-class F1 of every model as grouped bars (Table 4 as a picture)."""
    plt = _pyplot()
    classes, models = report["classes"], report["models"]
    width = 0.8 / len(models)
    figure, ax = plt.subplots(figsize=(max(8, 0.6 * len(classes)), 4.5))
    for i, (name, m) in enumerate(models.items()):
        values = [m["aggregate"]["per_class"][c]["f1"] for c in classes]
        ax.bar(np.arange(len(classes)) + i * width - 0.4 + width / 2, values, width, label=name)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="F1", ylim=(0, 1), title="per-class F1")
    ax.legend(fontsize=8)
    _save(figure, path)


def plot_reliability(folds: Sequence[LogitsSet], temperatures: Sequence[float] | None, path: Path, title: str) -> None:
    """Reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    labels, logits = pooled(folds)
    figure, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    versions = [("as trained", logits)]
    if temperatures is not None:
        versions.append(("temperature-scaled", np.concatenate([f.logits / t for f, t in zip(folds, temperatures)])))
    for (name, values), marker in zip(versions, ("o", "s")):
        diagram = calibration.reliability(calibration.probabilities_of(values), labels)
        used = diagram.count > 0
        ax.plot(diagram.confidence[used], diagram.accuracy[used], marker=marker, label=f"{name} (ECE {diagram.expected_calibration_error:.3f})")
    ax.set(xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}: reliability")
    ax.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def plot_risk_coverage(models: dict[str, Sequence[LogitsSet]], path: Path) -> None:
    """Risk (error of the accepted cells) against coverage for every model, with its AURC."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4.5))
    for name, folds in models.items():
        labels, logits = pooled(folds)
        probabilities = calibration.probabilities_of(logits)
        coverage, risk = calibration.risk_coverage(probabilities, labels)
        ax.plot(coverage, risk, lw=1.2, label=f"{name} (AURC {calibration.aurc(probabilities, labels):.3f})")
    ax.set(xlabel="coverage (share of cells accepted, most confident first)", ylabel="risk (error of accepted cells)", xlim=(0, 1), ylim=(0, 1), title="risk-coverage")
    ax.legend(fontsize=7)
    _save(figure, path)


def ablation_rows(runs: Path, alphas: Sequence[float]) -> list[list[str]]:
    """Table 2 for one run root: each backbone, their fusion at a = 0.5, and at the tuned a*."""
    models = {name: path for name, path in run_folder.discover_models(runs).items() if not name.startswith("fusion")}
    if not models:
        raise fusion.FusionError(f"--ablation {runs}: no trained models (fold*/test_logits.npz) there; check the folder")
    rows = []
    for name, path in models.items():
        sets = run_folder.load_fold_sets(path)
        agg = metrics.summarize(*pooled(sets), sets[0].classes)
        rows.append([name, fmt(agg["accuracy"]), fmt(agg["f1_weighted"]), fmt(agg["f1_macro"])])
    if len(models) >= 2:
        names = list(models)[:2]
        per_fold = run_folder.collect_folds(runs, names)
        labels = np.concatenate([sets[0].labels for sets in per_fold])
        tuned = fusion.grid_search(per_fold, alphas).best
        for label, weights in (("fusion a=0.5", (0.5, 0.5)), (f"fusion a*={tuned[0]:.1f}", tuned)):
            logits = np.concatenate([fusion.fuse([s.logits for s in sets], weights) for sets in per_fold])
            agg = metrics.summarize(labels, logits, per_fold[0][0].classes)
            rows.append([label, fmt(agg["accuracy"]), fmt(agg["f1_weighted"]), fmt(agg["f1_macro"])])
    return rows


def explanation_figure(image, maps: dict[str, np.ndarray], title: str, path: Path) -> None:
    """The image, then each map as an overlay on it (member maps, then the fused map), one row."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 1 + len(maps), figsize=(2.6 * (1 + len(maps)), 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for axis, (name, heat) in zip(axes[1:], maps.items()):
        axis.imshow(image)
        axis.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        axis.set_title(name, fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title, fontsize=10, y=1.04)  # above the panel titles, however tall the image
    _save(figure, path)
