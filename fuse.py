"""Adaptive logit fusion of trained backbones, and prediction on new images.

    python fuse.py --grid                        # a* on {0.0, ..., 1.0} by mean weighted F1 (the paper)
    python fuse.py --grid --select val           # a per fold chosen on its validation logits (no test leakage)
    python fuse.py --grid --select nested        # a per fold chosen on the other folds (fold k's logits unused)
    python fuse.py --grid --calibrate            # each member's logits / its temperature (fitted on validation) first
    python fuse.py --grid --select val --refer-accuracy 0.9   # a referral threshold certified per fold (>= 0.9 with prob. 0.9)
    python fuse.py --grid --select val --sets-alpha 0.1       # conformal prediction sets, 90 % coverage per fold
    python fuse.py --alpha 0.5                   # a fixed weight
    python fuse.py --predict new_images/         # fused class probabilities -> predictions.csv
    python fuse.py --predict new_images/ --explain why/   # + a Grad-CAM figure per image and why/explanations.csv
    python fuse.py --predict samples/ --fold 1 --samples  # per sample: % normal forms and defect groups with intervals
    python fuse.py --export deploy/              # model.pt2 + model.json: the same, without spermfuse
    python fuse.py --export deploy/ --fold 1 --precision int8   # + model_int8.onnx, its rules re-certified
    python fuse.py --predict samples/ --deployed deploy/ --precision int8 --samples   # the export alone, at int8
    python fuse.py --export deploy/ --fold 1 --precision bf16   # + model_bf16.pt2 (PyTorch; fastest on CPUs with AMX)

a weighs the first model: z = a * z_first + (1 - a) * z_second (defaults: efficientnetv2_s, resnet50v2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from spermfuse import cli, flags
from spermfuse.core import fusion
from spermfuse.core.files import atomic_write_text
from spermfuse.deploy import sample_report
from spermfuse.deploy.export import Precision, exported_files, write_export
from spermfuse.deploy.prediction import PredictionRequest, input_folders, predict
from spermfuse.reporting import report
from spermfuse.reporting.promises_markdown import promises_markdown
from spermfuse.runtime import environment_line
from spermfuse.selection import choice
from spermfuse.store import fusion_folder, run_folder
from spermfuse.store.output_folder import check_replaceable, refuse_overlap

log = logging.getLogger("fuse")


def parse_args(argv=None) -> argparse.Namespace:
    """The choice's, promises', prediction's and samples' flags come from their settings' fields (flags.setting)."""
    p = cli.argument_parser(__doc__)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--grid", action="store_true", help="search the weight grid")
    mode.add_argument("--alpha", type=float, help="fixed weight a of the first model (two models)")
    mode.add_argument(
        "--predict",
        type=Path,
        metavar="FOLDER",
        help="classify the images in FOLDER (or one image, or a quoted glob such as 'cells/*.png') with the fused models",
    )
    mode.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write DIR/model.pt2 (torch.export) and DIR/model.json: what --predict computes, without spermfuse",
    )
    p.add_argument(
        "--runs",
        type=Path,
        help="run root written by train.py (default: runs/ when it holds models, else the most recent runs/<name>/)",
    )
    p.add_argument(
        "--models", nargs="+", help="model folders under --runs to fuse (N >= 2; default: every trained model there)"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default <runs>/fusion)")
    p.add_argument(
        "--summary",
        type=Path,
        metavar="FILE.md",
        help="also write the referral and prediction-set figures per fold to FILE.md (demo.sh)",
    )
    p.add_argument("--fold", default="all", help="--predict, --export: models of this fold, or 'all' to average them")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing fusion (--out), --export, --explain or --samples folder that this command wrote "
        "(never one holding other files)",
    )
    flags.add_setting_flags(p, choice.Choice)
    promises = p.add_argument_group("promises (--grid or --alpha; each certified on held-out cells)")
    flags.add_setting_flags(p, choice.Referral, {"promises": promises}, prefix="refer-")
    promises.add_argument("--target-accuracy", type=float, metavar="TAU", help="the old name of --refer-accuracy")
    flags.add_setting_flags(p, choice.PredictionSets, {"promises": promises}, prefix="sets-")
    sections = {
        "prediction": p.add_argument_group("prediction (--predict)"),
        "samples": p.add_argument_group("--samples"),
    }
    flags.add_setting_flags(p, PredictionRequest, sections)
    flags.add_setting_flags(p, sample_report.SampleSettings, sections)
    flags.add_setting_flags(p, Precision, {"export": p.add_argument_group("--export")})
    return p.parse_args(argv)


def referral(args) -> choice.Referral | None:
    """--refer-accuracy and the flags that refine it; its old name --target-accuracy still works (with a warning)."""
    given = flags.given_settings(args, choice.Referral, "refer-")
    if args.target_accuracy is not None:
        log.warning(
            "--target-accuracy is now --refer-accuracy: the threshold is certified, no longer the laxest observed one"
        )
        given = {"accuracy": args.target_accuracy, **given}
    flags.refuse_unless("accuracy" in given, args, choice.Referral, "--refer-accuracy", "refer-")
    return choice.Referral(**given) if given else None


def run_fusion(args, runs: Path, out: Path) -> None:
    """--grid or --alpha: choose, calibrate and certify the fusion; write the fusion folder ``out`` as a unit."""
    models = run_folder.fusion_members(runs, args.models)
    rule = choice.Choice(**flags.given_settings(args, choice.Choice))
    choice.check_weight_flags(args.alpha, rule.alphas, len(models))  # flags first: before the --out checks
    refuse_overlap(out, "--out", {f"--models {name}": runs / name for name in models})
    check_replaceable(out, "--out", args.overwrite, fusion_folder.legacy_fusion_files)  # before any work
    refer, sets = referral(args), flags.requested(args, choice.PredictionSets, "sets-", "alpha")
    promises = choice.promise_flags(rule.calibrate, refer, sets)
    chosen = choice.select(
        run_folder.collect_folds(runs, models, "test"),
        choice.held_out_folds(runs, models, "val", promises),
        models,
        rule,
        alpha=args.alpha,
        refer=refer,
        sets=sets,
        per_fold_cal=choice.held_out_folds(runs, models, "cal", promises),
    )
    grid_table = report.markdown_table(*chosen.grid) if chosen.grid is not None else None
    fusion_folder.write_fusion_folder(out, args.overwrite, chosen, grid_table)
    if args.summary is not None:
        environment = environment_line(torch.device("cpu"))
        summary = promises_markdown(chosen.settings, str(out / run_folder.FUSION_JSON), environment)
        atomic_write_text(args.summary, summary)
    log.info("wrote %s (weights %s)", out, chosen.settings.weights or "per fold")


def check_deployed_flags(args) -> None:
    """--deployed DIR is the model: the runs' flags, --explain (Grad-CAM needs the members) and
    the export's guard do not apply to it, and are refused rather than ignored."""
    given = {
        "--runs": args.runs is not None,
        "--models": args.models is not None,
        "--out": args.out is not None,
        "--fold": args.fold != "all",
        "--explain": args.explain is not None,
        "--device": args.device is not None,
        "--min-agreement": args.min_agreement is not None,
        "--force-precision": args.force_precision is not None,
    }
    refused = [flag for flag, present in given.items() if present]
    if refused:
        raise fusion.FusionError(
            f"{refused[0]} does not apply to --deployed {args.deployed} (the export folder is the model: its members, "
            "folds and rules, run on the CPU); leave it out, or predict with the runs instead of --deployed"
        )


def run(args) -> None:
    if args.explain is not None and args.predict is None:
        raise fusion.FusionError("--explain DIR explains predictions: give it with --predict FOLDER")
    if args.samples and args.predict is None:
        raise fusion.FusionError("--samples reports on predicted samples: give it with --predict FOLDER --fold K")
    flags.refuse_unless(args.predict is not None, args, PredictionRequest, "--predict FOLDER")
    flags.refuse_unless(args.samples, args, sample_report.SampleSettings, "--samples")
    if args.predict is not None and args.deployed is not None:
        check_deployed_flags(args)
        given = flags.given_settings(args, PredictionRequest)
        request = PredictionRequest(args.predict, None, None, precision=args.precision or "fp32", **given)
        predict(request, sample_report.SampleSettings(**flags.given_settings(args, sample_report.SampleSettings)))
        return
    flags.refuse_unless(args.export is not None, args, Precision, "--export DIR (or --predict FOLDER --deployed DIR)")
    runs = run_folder.find_run_root(args.runs)  # flags first: their errors do not depend on the runs
    out = args.out or runs / run_folder.FUSION_FOLDER
    if args.export:
        refuse_overlap(args.export, "--export", input_folders(runs, args.models, out))
        check_replaceable(args.export, "--export", args.overwrite, exported_files)  # before the members load
        settings = fusion_folder.read_fusion_settings(out)
        command = "python fuse.py " + " ".join(sys.argv[1:])
        precision = Precision(**flags.given_settings(args, Precision))
        write_export(runs, settings, settings.chosen_folds(args.fold), args.export, args.overwrite, command, precision)
    elif args.predict:
        request = PredictionRequest(
            args.predict,
            runs,
            out,
            args.models,
            args.fold,
            args.overwrite,
            **flags.given_settings(args, PredictionRequest),
        )
        predict(request, sample_report.SampleSettings(**flags.given_settings(args, sample_report.SampleSettings)))
    else:
        run_fusion(args, runs, out)


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
