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

a weighs the first model: z = a * z_first + (1 - a) * z_second (defaults: efficientnetv2_s, resnet50v2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from spermfuse import cli, fusion, inference, report, run_folder, sample_report
from spermfuse.export import export_fused
from spermfuse.files import atomic_write_csv, atomic_write_text
from spermfuse.fused_model import load_fold_members
from spermfuse.model_card import MODEL_CARD, model_card
from spermfuse.output_folder import check_replaceable, refuse_overlap, write_folder
from spermfuse.quantify import METHODS, WHO_NORMAL_LIMIT
from spermfuse.runtime import environment_line, resolve_device

log = logging.getLogger("fuse")


def parse_args(argv=None) -> argparse.Namespace:
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
    p.add_argument("--alphas", default="0:1:0.1", help="grid, start:stop:step or a comma list (default 0:1:0.1)")
    p.add_argument(
        "--select",
        choices=["test", "val", "nested"],
        default="test",
        help="test: the paper's choice on the test folds (optimistic); val: per fold on validation logits (no test leakage); "
        "nested: per fold on the other folds' test logits (those models trained on fold k's images)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="temperature-scale each member per fold on its validation logits before fusing",
    )
    p.add_argument(
        "--refer-accuracy",
        type=float,
        metavar="TAU",
        help="refer the cells below a confidence threshold certified on validation: accepted accuracy >= TAU with probability >= 1 - --refer-delta",
    )
    p.add_argument(
        "--target-accuracy", type=float, metavar="TAU", help="the old name of --refer-accuracy (now certified)"
    )
    p.add_argument(
        "--refer-delta",
        type=float,
        default=0.1,
        help="--refer-accuracy: the probability that the promise fails (default 0.1)",
    )
    p.add_argument(
        "--refer-method",
        choices=["sgr", "grid"],
        default="sgr",
        help="--refer-accuracy: SGR binary search (default) or a fixed Bonferroni grid",
    )
    p.add_argument(
        "--sets-alpha",
        type=float,
        metavar="ALPHA",
        help="conformal prediction sets that miss the true class with probability <= ALPHA (e.g. 0.1)",
    )
    p.add_argument(
        "--sets-method",
        choices=["aps", "raps", "lac"],
        default="aps",
        help="--sets-alpha: the conformal score (default aps)",
    )
    p.add_argument(
        "--sets-by",
        choices=["none", "part"],
        default="none",
        help="--sets-alpha: part = coverage per defect part group (head, neck, tail, normal; sperm18's classes)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default <runs>/fusion)")
    p.add_argument(
        "--summary",
        type=Path,
        metavar="FILE.md",
        help="also write the referral and prediction-set figures per fold to FILE.md (demo.sh)",
    )
    p.add_argument("--fold", default="all", help="--predict: models of this fold, or 'all' to average the folds")
    p.add_argument("--output", type=Path, default=Path("predictions.csv"), help="--predict: CSV to write")
    p.add_argument("--device", default="cpu", help="--predict: cpu, cuda or auto")
    p.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="--predict: also a Grad-CAM figure per image (each member's map and the fused map) and DIR/explanations.csv",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing fusion (--out), --export, --explain or --samples folder that this command wrote "
        "(never one holding other files)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="--predict: skip unreadable images and list them in the CSV instead of stopping",
    )
    p.add_argument(
        "--samples",
        action="store_true",
        help="--predict --fold K: each subfolder of FOLDER is one sample (patient); writes samples.csv beside --output and "
        f"a page per sample in {sample_report.REPORTS_FOLDER}/: %% normal forms and defect groups, corrected for the pair's errors",
    )
    p.add_argument(
        "--sample-method",
        choices=METHODS,
        default="acc",
        help="--samples: acc adjusts the count by the held-out confusion (default); cc counts (biased); pcc / em use probabilities",
    )
    p.add_argument(
        "--sample-groups",
        type=Path,
        metavar="FILE.json",
        help="--samples: a JSON object class -> group for the roll-up (default for sperm18's classes: head, neck, tail, normal)",
    )
    p.add_argument(
        "--estimate-on",
        choices=["classes", "groups"],
        default="classes",
        help="--samples: groups = estimate the groups' fractions from their merged confusion (when classes are too alike)",
    )
    p.add_argument("--normal-class", default="Normal", help="--samples: the class of normal forms (default Normal)")
    p.add_argument(
        "--normal-limit",
        type=float,
        default=WHO_NORMAL_LIMIT,
        help="--samples: the reference limit of normal forms the flag compares with (default 0.04, WHO 6th edition)",
    )
    p.add_argument("--sample-level", type=float, default=0.95, help="--samples: the intervals' level (default 0.95)")
    return p.parse_args(argv)


def held_out_logits(args, split: str) -> list | None:
    """Every model's ``split`` logits per fold (``val``, or ``cal`` with train.py --cal-fraction or
    --cal-holdout); None when some are missing, unless a flag needs the validation logits."""
    try:
        per_fold = run_folder.collect_folds(args.runs, args.models, split)
    except fusion.FusionError as error:
        if split == "val" and (needs := fusion.promise_flags(args.calibrate, refer_accuracy(args), args.sets_alpha)):
            raise fusion.FusionError(f"{needs[0]} needs every model's validation logits: {error}") from None
        return None
    if split == "cal":
        log.info(
            "calibration cells found (cal_logits.npz): temperatures, referral and prediction sets are fitted on them"
        )
    return per_fold


def check_models(args) -> None:
    """At least two distinct model folders (default: every trained one), none of them the output folder."""
    args.models = run_folder.fusion_members(args.runs, args.models)
    refuse_overlap(args.out, "--out", {f"--models {name}": args.runs / name for name in args.models})


def refer_accuracy(args) -> float | None:
    """--refer-accuracy, or its old name --target-accuracy (said in a warning)."""
    if args.target_accuracy is None:
        return args.refer_accuracy
    log.warning(
        "--target-accuracy is now --refer-accuracy: the threshold is certified (%s, delta %g), no longer the laxest observed one",
        args.refer_method,
        args.refer_delta,
    )
    return args.target_accuracy if args.refer_accuracy is None else args.refer_accuracy


def run_fusion(args) -> int:
    check_models(args)
    check_replaceable(args.out, "--out", args.overwrite, run_folder.legacy_fusion_files)  # before any work
    per_fold = run_folder.collect_folds(args.runs, args.models, "test")
    accuracy = refer_accuracy(args)
    refer = fusion.Referral(accuracy, args.refer_delta, args.refer_method) if accuracy is not None else None
    sets = None
    if args.sets_alpha is not None:
        by = fusion.part_groups(per_fold[0][0].classes) if args.sets_by == "part" else None
        sets = fusion.PredictionSets(args.sets_alpha, args.sets_method, by)
    chosen = fusion.select(
        per_fold,
        held_out_logits(args, "val"),
        args.models,
        rule=args.select,
        alphas=args.alphas,
        alpha=args.alpha,
        calibrate=args.calibrate,
        refer=refer,
        sets=sets,
        per_fold_cal=held_out_logits(args, "cal"),
    )
    settings = chosen.settings
    # Everything is computed; the folder is written as a unit (a refused or killed run changes nothing).
    with write_folder(args.out, "--out", args.overwrite, run_folder.legacy_fusion_files) as folder:
        if chosen.grid is not None:
            atomic_write_csv(folder / "grid.csv", *chosen.grid)
            atomic_write_text(folder / "grid.md", report.markdown_table(*chosen.grid))
        run_folder.write_fused_logits(folder, chosen.per_fold, settings.weights_per_fold, "fusion")
        for split, logits in (("val", chosen.per_fold_val), ("cal", chosen.per_fold_cal)):
            if logits is not None:
                run_folder.write_fused_logits(folder, logits, settings.weights_per_fold, "fusion", split=split)
        # The other rules' fused logits too, so evaluate.py tests the members against an
        # honestly selected fusion as well as the chosen one (fusion_val, fusion_nested, ...).
        for name, weights in chosen.others.items():
            run_folder.write_fused_logits(folder / name, chosen.per_fold, weights, f"fusion_{name}")
        run_folder.write_fusion_settings(folder, settings)
    if args.summary is not None:
        atomic_write_text(
            args.summary,
            report.promises_markdown(
                settings, str(args.out / run_folder.FUSION_JSON), environment_line(torch.device("cpu"))
            ),
        )
    log.info("wrote %s (weights %s)", args.out, settings.weights if settings.weights else "per fold")
    return 0


def fused_settings(args) -> tuple[run_folder.FusionSettings, list[int]]:
    """fusion.json and the folds asked for (--fold)."""
    settings = run_folder.read_fusion_settings(args.out)
    folds = settings.folds if args.fold == "all" else [int(args.fold)] if args.fold.isdigit() else None
    if folds is None or any(k not in settings.folds for k in folds):
        raise fusion.FusionError(f"--fold {args.fold}: fusion.json has folds {settings.folds} (or 'all')")
    return settings, folds


def model_folders(args) -> dict[str, Path]:
    """The inputs of --predict and --export, by flag: no output may be, lie in or contain one."""
    names = args.models or run_folder.trained_models(args.runs)
    inputs = {f"--models {name}": args.runs / name for name in names} | {"--out": args.out}
    if args.predict is None:
        return inputs
    # a folder or a file is the input itself; a glob pattern stands for the folder of its matches
    given = inference.prediction_inputs(args.predict)[0] if inference.is_pattern(args.predict) else args.predict
    return inputs | {"--predict": given}


def exported_files(folder: Path) -> set[str]:
    """The files an export folder written before manifests held (what --overwrite may replace)."""
    return {"model.pt2", "model.json", "model.onnx", MODEL_CARD}


def run_export(args) -> int:
    refuse_overlap(args.export, "--export", model_folders(args))
    check_replaceable(args.export, "--export", args.overwrite, exported_files)  # before the members load
    settings, folds = fused_settings(args)
    # The certified rules of the exported model travel with it (one fold's pair, or the folds'
    # average when they were certified on a shared calibration holdout).
    decision = settings.decision(folds) if settings.certified_for(folds) else {}
    if not settings.certified_for(folds):
        log.warning(
            "the referral threshold and prediction sets are certified per fold: export --fold K to carry them in model.json "
            "(or train with --cal-holdout F, for the average of the folds)"
        )
    members = load_fold_members(args.runs, settings.models, folds, "cpu")
    weights = settings.prediction_weights(folds)
    tested = fusion.fused_folds(args.runs, settings.models, folds, weights)  # for the model card
    card = model_card(
        args.runs,
        settings,
        folds,
        tested,
        members[0][0].pipeline.img_size,
        decision or None,
        "python fuse.py " + " ".join(sys.argv[1:]),
    )
    with write_folder(args.export, "--export", args.overwrite, exported_files) as folder:
        export_fused(members, settings.models, folds, weights, folder, decision or None)
        atomic_write_text(folder / MODEL_CARD, card)
    log.info(
        "wrote %s: model.pt2 (input uint8 N x 3 x %d x %d, output probabilities), model.json and %s; models %s, folds %s",
        args.export,
        members[0][0].pipeline.img_size,
        members[0][0].pipeline.img_size,
        MODEL_CARD,
        settings.models,
        folds,
    )
    return 0


def check_prediction_outputs(args) -> None:
    """--output and --explain: never an input, never a folder for the CSV; all before any work."""
    inputs = model_folders(args)
    refuse_overlap(args.output, "--output", {"--predict": inputs["--predict"]})
    if args.output.is_dir():
        raise fusion.FusionError(
            f"--output {args.output}: is a folder; give the CSV file to write, e.g. {args.output / 'predictions.csv'}"
        )
    if args.explain is not None:
        refuse_overlap(args.explain, "--explain", inputs)
        check_replaceable(args.explain, "--explain", args.overwrite, inference.explanation_files)
    if args.samples:
        refuse_overlap(sample_reports_folder(args), "--samples", inputs)
        check_replaceable(sample_reports_folder(args), "--samples", args.overwrite, sample_report.report_files)


def sample_reports_folder(args) -> Path:
    return args.output.parent / sample_report.REPORTS_FOLDER


def sample_request(args, settings: run_folder.FusionSettings, folds: list[int]):
    """--samples: (SampleSettings, the held-out confusion), checked before any model loads; None without it."""
    if not args.samples:
        return None
    options = sample_report.SampleSettings(
        args.sample_method, args.sample_level, args.normal_class, args.normal_limit, merge=args.estimate_on == "groups"
    )
    return sample_report.sample_request(args.runs, settings, folds, options, args.sample_groups)


def write_samples(
    args, request, samples, images, bad, probabilities, classes, threshold, set_calibrator, models, folds
):
    """samples.csv beside --output and the per-sample pages, every estimate computed first."""
    chosen, held_out = request
    sample_report.estimate_samples(samples, probabilities, held_out, chosen)
    table = sample_report.samples_table(samples, chosen)
    provenance = sample_report.Provenance(
        models,
        folds[0],
        args.out / run_folder.FUSION_JSON,
        held_out.source,
        len(bad),
    )
    with write_folder(sample_reports_folder(args), "--samples", args.overwrite, sample_report.report_files) as folder:
        sample_report.write_sample_pages(
            folder, samples, images, probabilities, classes, chosen, provenance, threshold, set_calibrator
        )
    samples_csv = args.output.parent / sample_report.SAMPLES_CSV
    atomic_write_csv(samples_csv, *table)
    log.info(
        "wrote %s and %s: %d samples (%s, %s)",
        samples_csv,
        sample_reports_folder(args),
        len(samples),
        chosen.method,
        held_out.source,
    )


def run_prediction(args) -> int:
    device = resolve_device(args.device)
    check_prediction_outputs(args)
    root, listed = inference.prediction_inputs(args.predict)  # a folder, a file or a glob pattern
    images, bad = inference.usable_images(root, args.skip_bad, listed)
    samples = sample_report.split_samples(root, images) if args.samples else None
    settings, folds = fused_settings(args)
    request = sample_request(args, settings, folds)
    threshold, set_calibrator = (
        settings.prediction_threshold(folds),
        settings.prediction_sets(folds),
    )  # before the work: --fold K
    members = load_fold_members(args.runs, settings.models, folds, device)
    names = settings.models
    weights = settings.prediction_weights(folds)
    probabilities = inference.fused_probabilities(images, members, weights, device)
    classes = members[0][0].classes
    atomic_write_csv(
        args.output,
        *inference.prediction_table(root, images, bad, probabilities, classes, threshold, set_calibrator),
    )
    if request is not None:
        write_samples(
            args, request, samples, images, bad, probabilities, classes, threshold, set_calibrator, names, folds
        )
    if args.explain is not None:
        with write_folder(args.explain, "--explain", args.overwrite, inference.explanation_files) as folder:
            inference.write_explanations(root, folder, images, members, names, weights, device)
        log.info(
            "wrote %s: a Grad-CAM figure per image (members %s and their fusion) and explanations.csv",
            args.explain,
            names,
        )
    shown = "; ".join(f"fold {k}: " + ", ".join(f"{w:.3f}" for w in ws) for k, ws in zip(folds, weights))
    log.info(
        "wrote %s: %d images%s, models %s, effective weights (w / T) %s%s",
        args.output,
        len(images),
        f" ({len(bad)} unusable, listed as skipped)" if bad else "",
        names,
        shown,
        f", refer below confidence {threshold:.4f}" if threshold is not None else "",
    )
    return 0


def run(args) -> int:
    if args.explain is not None and args.predict is None:
        raise fusion.FusionError("--explain DIR explains predictions: give it with --predict FOLDER")
    if args.samples and args.predict is None:
        raise fusion.FusionError("--samples reports on predicted samples: give it with --predict FOLDER --fold K")
    args.runs = run_folder.find_run_root(args.runs)  # flags first: their errors do not depend on the runs
    args.out = args.out or args.runs / run_folder.FUSION_FOLDER
    if args.export:
        return run_export(args)
    return run_prediction(args) if args.predict else run_fusion(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
