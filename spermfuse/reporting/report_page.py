"""report.html: one self-contained page of an evaluation (figures embedded, no script, no
network), the headline first in plain words, then the tables and figures, then provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..page import html_page, png_data_uri
from .report import fmt, headline_sentence, interval, majority_verdict, majority_warning, report_figures

REPORT_HTML = "report.html"


def _headline(report: dict, main: str) -> list[tuple]:
    models = report["models"]
    cells = sum(v["support"] for v in models[main]["aggregate"]["per_class"].values())
    line = report.get("headline")
    key = line["fusion"] if line else main
    summary = models[key]["summary"]["accuracy"]
    blocks = [
        (
            "p",
            f"{cells} test cells of {len(report['classes'])} classes, each tested once over the folds. "
            f"{key}: accuracy {fmt(models[key]['aggregate']['accuracy'])} "
            f"(fold-wise 95 % interval, corrected for the folds' shared training cells: "
            f"{interval(summary.get('ci95_corrected'))}).",
            "strong",
        )
    ]
    if line:
        blocks.append(("p", headline_sentence(report), ""))
    return blocks


def _per_class(report: dict, main: str) -> tuple:
    per_class = report["models"][main]["aggregate"]["per_class"]
    rows = [
        [c, v["support"], fmt(v["recall"]), fmt(v["specificity"]), fmt(v["precision"]), fmt(v["f1"])]
        for c, v in per_class.items()
    ]
    return ("table", ["class", "test cells", "sensitivity (recall)", "specificity", "precision", "F1"], rows)


def _models(report: dict) -> tuple:
    keys = ["accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "auroc_macro", "ece"]
    rows = [
        [name] + [fmt(m["aggregate"][k]) for k in keys] + [fmt(m["aggregate"]["majority"]["rate"])]
        for name, m in report["models"].items()
    ]
    header = ["model", "accuracy", "balanced accuracy", "weighted F1", "macro F1", "macro AUROC", "ECE"]
    return ("table", header + ["always-majority rate"], rows)


def _against_majority(report: dict) -> list[tuple]:
    """The warning (when a model does not beat the majority class) and every model's verdict."""
    warning = majority_warning(report["models"])
    verdicts = [majority_verdict(name, m["aggregate"]) for name, m in report["models"].items()]
    return ([("p", warning, "strong")] if warning else []) + [("ul", verdicts)]


def report_page(report: dict, main: str, folder: Path, provenance: Sequence[str], title: str) -> str:
    """The HTML of ``folder``'s report (its figures and gallery, when written, are embedded)."""
    figures = report_figures(main)
    blocks: list[tuple] = [("h1", title), *_headline(report, main)]
    blocks += [("h2", "Models"), _models(report), *_against_majority(report)]
    blocks += [("h2", f"Per class: {main}"), _per_class(report, main)]
    shown = [(name, alt) for name, alt in figures if (folder / name).is_file()]
    if shown:
        blocks.append(("h2", "Figures"))
        blocks += [("img", alt, png_data_uri(folder / name)) for name, alt in shown]
    gallery = sorted((folder / "gallery").glob("*.png")) if (folder / "gallery").is_dir() else []
    if gallery:
        blocks.append(("h2", "Grad-CAM gallery: per class the most confident right and wrong cell"))
        blocks += [("img", path.stem.replace("_", ", "), png_data_uri(path)) for path in gallery]
    blocks += [("h2", "Provenance"), ("ul", list(provenance))]
    return html_page(blocks, title)
