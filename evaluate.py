"""The paper's full evaluation of logits files: tables, report.json and figures.

    python evaluate.py                                   # every model under runs/ (and runs/fusion)
    python evaluate.py --logits effnet=runs/efficientnetv2_s fused=runs/fusion --main fused
    python evaluate.py --ablation baseline=runs_base weighted=runs_cw augmented=runs_aug both=runs
    python evaluate.py --explain                         # + a Grad-CAM gallery (needs the runs' best.pt)
    python evaluate.py --explain --masks data/sperm18-masks   # + the pointing game against the part masks

Writes reports/<name>/report.md, report.json, confusion_<model>.png, roc_<model>.png, reliability_<model>.png, risk_coverage.png,
pr_<model>.png and f1_comparison.png.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spermfuse import cli, evaluation, explain_runs, figures, fusion, pointing_game, report, run_folder, splits
from spermfuse.report_page import REPORT_HTML, report_page
from spermfuse.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from spermfuse.data import load_rgb
from spermfuse.runtime import environment_line, resolve_device
from spermfuse.output_folder import check_replaceable, write_folder

log = logging.getLogger("evaluate")


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.argument_parser(__doc__)
    p.add_argument(
        "--runs",
        type=Path,
        help="run root to search when --logits is not given (default: runs/ when it holds models, else the most recent runs/<name>/)",
    )
    p.add_argument("--logits", nargs="+", metavar="NAME=DIR", help="named model folders holding fold logits")
    p.add_argument("--main", help="model for Tables 3 and 7 (default: fusion if present, else the first)")
    p.add_argument(
        "--name", help="report name: output goes to <reports>/<name>/ (default evaluation; with --ablation, ablation)"
    )
    p.add_argument("--reports", type=Path, default=Path("reports"), help="where report folders go (default reports)")
    p.add_argument("--ablation", nargs="+", metavar="NAME=DIR", help="Table 2 from several run roots")
    p.add_argument("--alphas", default="0:1:0.1", help="grid for the tuned fusion in --ablation")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing report folder (<reports>/<name>) that evaluate.py wrote (never one holding other files)",
    )
    p.add_argument(
        "--no-figures", action="store_true", help="skip the PNG figures (faster; report.md and report.json only)"
    )
    p.add_argument(
        "--summary",
        type=Path,
        metavar="FILE.md",
        help="also write the headline table to FILE.md (demo.sh: docs/demo_results.md), the per-class, calibration and "
        "pointing-game tables to FILE_details.md, and beside them the figures they show",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="opt-in, needs the checkpoints: a gallery of Grad-CAM figures, per class the fused model's most confident correct and wrong test image",
    )
    p.add_argument(
        "--masks",
        type=Path,
        metavar="DIR",
        help="with --explain: the pointing game against the part masks of DIR (python -m spermfuse.synthetic --out DIR --masks: the same images)",
    )
    p.add_argument("--explain-limit", type=int, metavar="N", help="--masks: only the first N test images of each fold")
    p.add_argument(
        "--randomisation-images",
        type=int,
        default=100,
        metavar="N",
        help="--explain: test images (spread over the folds) of the cascading-randomisation check (default 100)",
    )
    p.add_argument("--device", default="cpu", help="--explain: cpu, cuda or auto")
    return p.parse_args(argv)


def named_folders(pairs: list[str]) -> dict[str, Path]:
    folders = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise fusion.FusionError(f"{pair}: expected NAME=DIR")
        folders[name] = Path(folder)
    return folders


def single_split_note(name: str, sets: list[run_folder.LogitsSet]) -> str:
    if run_folder.is_single_split(sets):
        return f"{name}: one holdout test split ({sets[0].source}), evaluated as a single split: no folds, so no standard deviation, confidence interval or fold-wise paired test"
    return f"{name}: only one fold, so no standard deviation or confidence interval"


def fusion_settings(folders: dict[str, Path]) -> run_folder.FusionSettings | None:
    """The fusion's fusion.json, when the evaluated models include a fusion that has one."""
    if "fusion" not in folders or not (folders["fusion"] / "fusion.json").is_file():
        return None
    return run_folder.read_fusion_settings(folders["fusion"])


def details_path(summary: Path) -> Path:
    """Where --summary FILE.md puts the per-class, calibration and pointing-game tables: FILE_details.md."""
    return summary.with_name(summary.stem + "_details" + summary.suffix)


def held_out_sets(folder: Path, split: str) -> list[run_folder.LogitsSet] | None:
    """The model's validation (temperature scaling) or calibration logits; None when it has none."""
    try:
        return run_folder.load_fold_sets(folder, split)
    except fusion.FusionError:
        return None


def few_groups_notes(groups: dict[int, dict[str, int]]) -> list[str]:
    """A warning for every fold in which a class's test images come from fewer than 2 groups."""
    return [
        f"fold {fold}: the test images of {name} come from {n} group: its scores in that fold rest on one patient"
        for fold, counts in groups.items()
        for name, n in counts.items()
        if name != "all" and n < 2
    ]


def check_comparable(models: dict[str, list[run_folder.LogitsSet]]) -> None:
    first_name, first = next(iter(models.items()))
    for name, sets in models.items():
        if sets[0].classes != first[0].classes:
            raise fusion.FusionError(
                f"{name} ({sets[0].source}): classes differ from {first_name}; evaluate them separately"
            )


def write_explanations(args, out: Path, classes: list[str], masks: dict[str, Path] | None) -> str | None:
    """The gallery (and, with ``masks``, the pointing game) under ``out``; the pointing game's Markdown."""
    device = resolve_device(args.device)
    images, _ = explain_runs.fused_test_images(args.runs)
    chosen = {image.path: (name, kind) for name, kind, image in explain_runs.gallery_images(images, classes)}
    rows = []
    for image, explained in explain_runs.explain_test_images(
        args.runs, [i for i in images if i.path in chosen], device
    ):  # fold by fold
        name, kind = chosen[image.path]
        figure = out / "gallery" / f"{name}_{kind}.png"
        # The title names the class the maps explain (the plain forward's); the report's
        # prediction (with TTA and temperatures) is added when it differs.
        title = (
            f"{name}, {kind}: maps of {classes[explained.predicted]} {explained.probability:.2f} (fold {image.fold})"
        )
        if explained.predicted != image.predicted:
            title += f"; reported prediction {classes[image.predicted]}"
        runner_up = int(np.argsort(image.probabilities)[-2])
        title += f"\nnext most likely: {classes[runner_up]} {image.probabilities[runner_up]:.2f}"
        figures.explanation_figure(load_rgb(explained.path), explained.figure_maps(), title, figure)
        rows.append(
            [
                name,
                kind,
                image.path,
                classes[image.predicted],
                f"{image.probability:.4f}",
                f"![](gallery/{figure.name})",
            ]
        )
    rows.sort()  # by class, then correct before wrong
    atomic_write_text(
        out / "gallery.md",
        "# Grad-CAM gallery of the fused model\n\n"
        "The maps explain the plain forward pass (no test-time augmentation), members on the fused map's scale.\n\n"
        + report.markdown_table(["class", "kind", "image", "predicted", "probability", "maps"], rows),
    )
    log.info("wrote %s: %d Grad-CAM figures", out / "gallery.md", len(rows))
    curve = explain_runs.randomisation_check(args.runs, device, args.randomisation_images)
    atomic_write_json(out / "randomisation.json", curve.to_dict())
    figures.plot_randomisation(curve, out / "randomisation.png")
    text = report.randomisation_markdown(curve)
    atomic_write_text(out / "randomisation.md", text)
    if masks is not None:
        cases, setting = explain_runs.pointing_cases(args.runs, masks, device, args.explain_limit)
        rows = pointing_game.summarise(cases)
        atomic_write_json(out / "pointing_game.json", {"setting": setting, "rows": rows})
        pointing = report.pointing_game_markdown(rows, setting)
        atomic_write_text(out / "pointing_game.md", pointing)
        text = pointing + "\n" + text
    print(text)
    return text


def run_ablation(args, out: Path) -> None:
    """Table 2: each run root's backbones and their fusions, in ``out/ablation.md``."""
    rows = evaluation.ablation_rows(named_folders(args.ablation), fusion.parse_alphas(args.alphas))
    header = ["setting", "model", "accuracy", "weighted F1", "macro F1"]
    header += [f"McNemar p vs {next(iter(named_folders(args.ablation)))}", "folds with p < 0.05"]
    table = report.markdown_table(header, rows)
    with write_folder(out, "--name", args.overwrite, report.legacy_report_files) as folder:
        atomic_write_text(folder / "ablation.md", "# Table 2. Ablation\n\n" + table)
    print(table)


def load_models(args) -> tuple[dict[str, Path], dict[str, list[run_folder.LogitsSet]], str]:
    """The model folders, their test logits per fold, and the main model's name."""
    folders = named_folders(args.logits) if args.logits else run_folder.discover_models(args.runs)
    if not folders:
        raise fusion.FusionError(f"{args.runs}: no logits found; train with train.py (and fuse with fuse.py) first")
    models = {name: run_folder.load_fold_sets(folder) for name, folder in folders.items()}
    check_comparable(models)
    main_name = args.main or ("fusion" if "fusion" in models else next(iter(models)))
    if main_name not in models:
        raise fusion.FusionError(f"--main {main_name}: not among {', '.join(models)}")
    return folders, models, main_name


def run_evaluation(args, out: Path) -> None:
    """report.json, report.md and the figures of every model under ``out`` (a unit); --summary; --explain."""
    start = time.perf_counter()
    if not args.logits:
        args.runs = run_folder.find_run_root(args.runs)
    folders, models, main_name = load_models(args)
    notes = [single_split_note(name, sets) for name, sets in models.items() if len(sets) < 2]
    val_models = {name: sets for name, folder in folders.items() if (sets := held_out_sets(folder, "val")) is not None}
    cal_models = {name: sets for name, folder in folders.items() if (sets := held_out_sets(folder, "cal")) is not None}
    settings = fusion_settings(folders)
    shipped = (
        {"fusion": settings.fused_temperatures()} if settings is not None and settings.fused_temperatures() else None
    )
    result = evaluation.build_report(
        models, val_models, shipped, cal_models, settings.select if settings is not None else None
    )
    if not args.logits and (args.runs / "folds.csv").is_file():
        groups = splits.groups_per_fold(args.runs / "folds.csv")
        if groups is not None:
            result["groups_per_fold"] = groups
            notes += few_groups_notes(groups)
    grid_md = next(
        ((folder / "grid.md").read_text() for folder in reversed(folders.values()) if (folder / "grid.md").is_file()),
        None,
    )
    masks = None
    if args.masks is not None:
        if not args.explain:
            raise fusion.FusionError("--masks DIR is for the pointing game of --explain; add --explain")
        masks = explain_runs.check_masks(args.runs, args.masks)  # before anything is written
    # The report folder is written as a unit: a killed run leaves the previous report whole.
    with write_folder(out, "--name", args.overwrite, report.legacy_report_files) as folder:
        atomic_write_json(folder / "report.json", result)
        atomic_write_text(
            folder / "report.md",
            report.report_markdown(result, main_name, grid_md, notes, with_figures=not args.no_figures),
        )
        pointing = write_explanations(args, folder, result["classes"], masks) if args.explain else None
        if not args.no_figures:
            figures.write_all(models, result, folder)
        provenance = [
            f"runs: {args.runs if not args.logits else ', '.join(args.logits)}",
            f"command: python evaluate.py {' '.join(sys.argv[1:])}",
            f"machine: {environment_line(torch.device('cpu'))}",
            f"written: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        ]
        page = report_page(result, main_name, folder, provenance, f"spermfuse evaluation: {out.name}")
        atomic_write_text(folder / REPORT_HTML, page)
    if args.summary:
        source, machine = str(out / "report.json"), environment_line(torch.device("cpu"))
        atomic_write_text(args.summary, report.summary_markdown(result, settings, source, machine))
        details = report.summary_details_markdown(result, source, machine) + (f"\n{pointing}" if pointing else "")
        atomic_write_text(details_path(args.summary), details)
        if not args.no_figures:  # the figures beside it come from the same run, stamped with the same commit
            for name in report.summary_figures(result, main_name):
                atomic_write_bytes(args.summary.parent / name, (out / name).read_bytes())
    for note in notes:
        log.warning("note: %s", note)
    for name, m in result["models"].items():
        a = m["aggregate"]
        log.info(
            "%-18s acc %.4f  F1w %.4f  F1m %.4f  AUROC %.4f",
            name,
            a["accuracy"],
            a["f1_weighted"],
            a["f1_macro"],
            a["auroc_macro"],
        )
    log.info("wrote %s in %.1f s", out, time.perf_counter() - start)


def run(args, out: Path) -> None:
    check_replaceable(out, "--name", args.overwrite, report.legacy_report_files)  # before any work
    return run_ablation(args, out) if args.ablation else run_evaluation(args, out)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.reports / (args.name or ("ablation" if args.ablation else "evaluation"))
    return cli.run(lambda: run(args, out))


if __name__ == "__main__":
    sys.exit(main())
