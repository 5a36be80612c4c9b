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

import torch

from spermfuse import cli, flags
from spermfuse.core import fusion
from spermfuse.core.files import atomic_write_json, atomic_write_text
from spermfuse.reporting import evaluation, explain_runs, figures, report
from spermfuse.reporting.report_page import REPORT_HTML, report_page
from spermfuse.runtime import environment_line
from spermfuse.selection import choice
from spermfuse.store import run_folder
from spermfuse.store.output_folder import check_not_a_file, check_plain_name, check_replaceable, write_folder

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
        "--ablation-against",
        choices=["first", "previous"],
        default="first",
        help="--ablation: McNemar's test of each setting against the first one, or against the one before it",
    )
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
    flags.add_setting_flags(p, explain_runs.ExplanationSettings)
    return p.parse_args(argv)


def named_folders(pairs: list[str]) -> dict[str, Path]:
    folders = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise fusion.FusionError(f"{pair}: expected NAME=DIR")
        folders[name] = Path(folder)
    return folders


def run_ablation(args, out: Path) -> None:
    """Table 2: each run root's backbones and their fusions, in ``out/ablation.md``."""
    rows = evaluation.ablation_rows(
        named_folders(args.ablation), choice.parse_alphas(args.alphas), args.ablation_against
    )
    header = ["setting", "model", "accuracy", "weighted F1", "macro F1"]
    against = (
        next(iter(named_folders(args.ablation))) if args.ablation_against == "first" else "the row's previous setting"
    )
    header += [f"McNemar p vs {against}", "folds with p < 0.05"]
    table = report.markdown_table(header, rows)
    with write_folder(out, "--name", args.overwrite, report.legacy_report_files) as folder:
        atomic_write_text(folder / "ablation.md", "# Table 2. Ablation\n\n" + table)
    print(table)


def run_evaluation(args, out: Path) -> None:
    """report.json, report.md and the figures of every model under ``out`` (a unit); --summary; --explain."""
    start = time.perf_counter()
    runs = args.runs if args.logits else run_folder.find_run_root(args.runs)
    folders = named_folders(args.logits) if args.logits else run_folder.discover_models(runs)
    if not folders:
        raise fusion.FusionError(f"{runs}: no logits found; train with train.py (and fuse with fuse.py) first")
    evaluated = evaluation.evaluate_folders(folders, None if args.logits else runs / "folds.csv", args.main)
    result, main_name = evaluated.result, evaluated.main
    options = explain_runs.ExplanationSettings(**flags.given_settings(args, explain_runs.ExplanationSettings))
    masks = explain_runs.check_masks(runs, options.masks) if options.masks else None  # before any writing
    # The report folder is written as a unit: a killed run leaves the previous report whole.
    with write_folder(out, "--name", args.overwrite, report.legacy_report_files) as folder:
        atomic_write_json(folder / "report.json", result)
        markdown = report.report_markdown(result, main_name, evaluated.grid, evaluated.notes, not args.no_figures)
        atomic_write_text(folder / "report.md", markdown)
        pointing = None
        if args.explain:
            pointing = explain_runs.write_explanations(runs, folder, result["classes"], options, masks)
            print(pointing)
        if not args.no_figures:
            figures.write_all(evaluated.models, result, folder)
        provenance = [
            f"runs: {runs if not args.logits else ', '.join(args.logits)}",
            f"command: python evaluate.py {' '.join(sys.argv[1:])}",
            f"machine: {environment_line(torch.device('cpu'))}",
            f"written: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        ]
        page = report_page(result, main_name, folder, provenance, f"spermfuse evaluation: {out.name}")
        atomic_write_text(folder / REPORT_HTML, page)
    if args.summary:
        shown = [] if args.no_figures else report.summary_figures(result, main_name)
        shown += ["randomisation.png"] if args.explain else []
        machine = environment_line(torch.device("cpu"))
        report.write_summary(args.summary, out, result, evaluated.settings, machine, pointing, shown)
    for note in evaluated.notes:
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
    if args.name is not None:
        check_plain_name("--name", args.name, "ablation_128px")
    check_not_a_file(args.reports, "--reports")
    if args.masks is not None and not args.explain:  # the flags first, before any work
        raise fusion.FusionError("--masks DIR is for the pointing game of --explain; add --explain")
    flags.refuse_unless(args.explain, args, explain_runs.ExplanationSettings, "--explain")
    check_replaceable(out, "--name", args.overwrite, report.legacy_report_files)
    return run_ablation(args, out) if args.ablation else run_evaluation(args, out)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.reports / (args.name or ("ablation" if args.ablation else "evaluation"))
    return cli.run(lambda: run(args, out))


if __name__ == "__main__":
    sys.exit(main())
