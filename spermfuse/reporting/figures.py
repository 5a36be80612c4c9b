"""The figures of an evaluation and of an explanation, as PNG files (matplotlib, imported only when drawing)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..core import calibration, metrics
from ..core.files import atomic_write_bytes
from ..core.logits import LogitsSet, pooled
from ..core.quantify import FractionEstimate
from ..runtime import git_commit


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def provenance_stamp() -> dict[str, str]:
    """The PNG text chunks every figure carries: the spermfuse version and commit that drew it
    (a README's figures can be checked against the results file of the same run)."""
    return {"Software": f"spermfuse {__version__}", "Comment": f"commit {git_commit(short=True) or 'unknown'}"}


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata=provenance_stamp())
    _pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> None:
    """Counts and row-normalised confusion matrices side by side."""
    plt = _pyplot()
    matrix = np.asarray(confusion, dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.45 * len(classes))
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 2, size))
    for ax, values, name, fmt_ in (
        (axes[0], matrix, "counts", "{:.0f}"),
        (axes[1], normalised, "row-normalised", "{:.2f}"),
    ):
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
                    ax.text(
                        j,
                        i,
                        fmt_.format(values[i, j]),
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="white" if values[i, j] > peak / 2 else "black",
                    )
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
    # The folds' curves are interpolated on a common grid: this mean differs slightly from the
    # report's macro AUROC of the pooled predictions, and the legend says which it is.
    ax.plot(
        grid,
        mean,
        color="black",
        lw=2,
        label=f"mean of the folds' macro AUROC {np.mean(aucs):.4f}{spread} (interpolated)",
    )
    ax.fill_between(
        grid, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color="grey", alpha=0.3, label="+-1 std"
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: macro ROC over folds")
    ax.legend(loc="lower right", fontsize=7)
    _save(figure, path)


def plot_precision_recall(
    labels: np.ndarray, logits: np.ndarray, classes: Sequence[str], path: Path, title: str
) -> None:
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
            ax.plot(
                recall,
                precision,
                lw=1,
                color=colours(c % 20),
                label=f"{name} ({average_precision_score(truth, probabilities[:, c]):.2f})",
            )
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title=f"{title}: precision-recall (AP per class)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
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
        ax.plot(
            diagram.confidence[used],
            diagram.accuracy[used],
            marker=marker,
            label=f"{name} (ECE {diagram.expected_calibration_error:.3f})",
        )
    ax.set(
        xlabel="confidence (max probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"{title}: reliability",
    )
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
    ax.set(
        xlabel="coverage (share of cells accepted, most confident first)",
        ylabel="risk (error of accepted cells)",
        xlim=(0, 1),
        ylim=(0, 1),
        title="risk-coverage",
    )
    ax.legend(fontsize=7)
    _save(figure, path)


EXPLANATION_COLORMAP = "viridis"  # perceptually uniform and colour-blind safe (not jet)


def overlay(
    image, heat: np.ndarray, colormap: str = EXPLANATION_COLORMAP, alpha: float = 0.5, vmax: float = 1.0
) -> np.ndarray:
    """An RGB uint8 image [H, W, 3]: ``heat`` [H, W] (0 .. ``vmax``, in the image's geometry)
    coloured by ``colormap`` and blended over ``image`` (a PIL image or an RGB array) with
    opacity ``alpha``."""
    import matplotlib

    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)[..., :3]
    if rgb.shape[:2] != heat.shape:
        raise ValueError(f"a map of shape {heat.shape} for an image of {rgb.shape[:2]}: give both in one geometry")
    coloured = matplotlib.colormaps[colormap](np.clip(np.asarray(heat) / max(vmax, 1e-12), 0.0, 1.0))[..., :3] * 255
    return np.round((1 - alpha) * rgb + alpha * coloured).astype(np.uint8)


def explanation_figure(image, maps: dict[str, np.ndarray], title: str, path: Path) -> None:
    """The image, then each map as an overlay on it (member maps, then the fused map), one row,
    on one colour scale with its bar (members drawn on the fused map's scale: 1 = its peak)."""
    import matplotlib

    plt = _pyplot()
    vmax = max(1.0, *(float(np.max(heat)) for heat in maps.values()))
    figure, axes = plt.subplots(1, 1 + len(maps), figsize=(2.6 * (1 + len(maps)) + 0.6, 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for axis, (name, heat) in zip(axes[1:], maps.items()):
        axis.imshow(overlay(image, heat, vmax=vmax))
        axis.set_title(name, fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, vmax), EXPLANATION_COLORMAP)
    figure.colorbar(scale, ax=list(axes), fraction=0.02, pad=0.01).set_label("Grad-CAM (1 = fused peak)", fontsize=8)
    figure.suptitle(title, fontsize=10, y=1.04)  # above the panel titles, however tall the image
    _save(figure, path)


def plot_randomisation(curve, path: Path) -> None:
    """The cascading-randomisation curve (``sanity_check.RandomisationCurve``): Spearman and SSIM
    of the randomised maps to the trained ones, step by step, with their 95 % intervals, beside
    the two-random-networks null, the model-free darkness reference and the failure threshold."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(curve.steps))
    for name, values, colour in (("Spearman", curve.spearman, "tab:blue"), ("SSIM", curve.ssim, "tab:orange")):
        axis.plot(x, [v.mean for v in values], marker="o", color=colour, label=f"{name}, trained vs randomised")
        axis.fill_between(x, [v.low for v in values], [v.high for v in values], color=colour, alpha=0.2)
    axis.axhline(curve.null_spearman.mean, color="tab:blue", linestyle="--", label="Spearman, two random pairs")
    axis.axhline(curve.darkness_spearman.mean, color="grey", linestyle=":", label="Spearman, trained vs darkness")
    axis.axhline(curve.threshold, color="tab:red", linewidth=0.8, label=f"fails at or above ({curve.threshold})")
    axis.set_xticks(x, curve.steps, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("similarity to the trained map")
    axis.set_xlabel("re-initialised, from the logits down")
    axis.set_ylim(-0.2, 1.05)
    axis.legend(fontsize=7)
    axis.set_title(f"Cascading randomisation, {curve.images} test cells", fontsize=10)
    _save(figure, path)


def write_all(models: dict[str, Sequence[LogitsSet]], result: dict, out: Path) -> None:
    """Every figure of a report: confusion, ROC, precision-recall and reliability per model, F1 and risk-coverage."""
    for name, sets in models.items():
        labels, logits = pooled(sets)
        plot_confusion(
            result["models"][name]["aggregate"]["confusion"], result["classes"], out / f"confusion_{name}.png", name
        )
        plot_roc(sets, out / f"roc_{name}.png", name)
        plot_precision_recall(labels, logits, result["classes"], out / f"pr_{name}.png", name)
    plot_f1_comparison(result, out / "f1_comparison.png")
    plot_risk_coverage(models, out / "risk_coverage.png")
    for name, sets in models.items():
        plot_reliability(
            sets, result["models"][name]["calibration"]["temperature_per_fold"], out / f"reliability_{name}.png", name
        )


def plot_fractions(estimate: FractionEstimate, limit: tuple[str, float] | None, path: Path, title: str) -> None:
    """A sample's estimated fractions (%) with their intervals: the groups on top, then the classes;
    ``limit`` (name, value) draws a reference line on that row (WHO's 4 % normal forms)."""
    rows = ([] if estimate.groups is None else [(f"{g} (group)", *estimate.of(g)) for g in estimate.groups.classes]) + [
        (c, *estimate.of(c)) for c in estimate.classes
    ]
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 0.26 * len(rows) + 1.2))
    positions = np.arange(len(rows))[::-1]
    values = np.array([r[1:] for r in rows]) * 100
    axis.errorbar(
        values[:, 0],
        positions,
        xerr=[values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]],
        fmt="o",
        color="tab:blue",
        ecolor="tab:gray",
        capsize=3,
        markersize=4,
    )
    if limit is not None:
        name, value = limit
        row = positions[[r[0] for r in rows].index(name)] if name in [r[0] for r in rows] else None
        axis.axvline(value * 100, color="tab:red", linestyle="--", linewidth=1, label=f"{value:.0%} ({name})")
        if row is not None:
            axis.axhspan(row - 0.45, row + 0.45, color="tab:red", alpha=0.08)
        axis.legend(fontsize=7, loc="lower right")
    axis.set_yticks(positions)
    axis.set_yticklabels([r[0] for r in rows], fontsize=8)
    axis.set_xlabel(f"% of cells ({estimate.level:.0%} interval, {estimate.method})")
    axis.set_xlim(0, max(5.0, float(values[:, 2].max()) * 1.1))
    axis.set_title(title, fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    _save(figure, path)


def contact_sheet(images: Sequence, captions: Sequence[str], path: Path, columns: int = 6) -> None:
    """Images in a grid, each with its caption (the least certain cells of a sample)."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.7 * columns, 1.95 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, image, caption in zip(axes.ravel(), images, captions):
        axis.imshow(image)
        axis.set_title(caption, fontsize=6)
    _save(figure, path)
