"""Train one fold (or all five) of a backbone as the papers describe.

    python train.py --fold 2 --arch resnet50v2            # method A, paper settings
    python train.py --fold all --arch efficientnetv2_s
    python train.py --preset paper_b --data ALL/           # method B: Otsu + two-stage EfficientNet-B4
    torchrun --nproc_per_node=2 train.py --fold 1          # DistributedDataParallel: one fold over 2 GPUs
    torchrun --nproc_per_node=2 train.py --fold all --fold-parallel   # the folds spread over 2 GPUs (or processes)

Without --data, the embedded synthetic sperm18 set is generated (once) and used.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from spermfuse import cli, distributed, fold_setup, trainer
from spermfuse.config import PRESETS, preset_config, recorded_settings, validate_config
from spermfuse.download import fetch
from spermfuse.engine import TTA_MODES
from spermfuse.errors import ConfigError
from spermfuse.files import atomic_write_text
from spermfuse.fold_parallel import run_fold_parallel
from spermfuse.models import list_models
from spermfuse.models.catalogue import catalogue_table, find_entry
from spermfuse.preemption import StopRequest
from spermfuse.progress_line import GPU_SIZED, DownloadLine, ProgressLine
from spermfuse.run_folder import LAST_CHECKPOINT
from spermfuse.run_plan import plan_table
from spermfuse.slurm import SlurmSettings, batch_script


def parse_args(argv=None) -> argparse.Namespace:
    """Every flag defaults to None: only the flags given override the preset (``spermfuse/config.py``)."""
    d = trainer.TrainConfig()
    p = cli.argument_parser(__doc__)
    run = p.add_argument_group("what to train")
    data = p.add_argument_group("data and splits")
    model = p.add_argument_group("model and starting weights")
    optimisation = p.add_argument_group("optimisation")
    augmentation = p.add_argument_group("augmentation")
    runtime = p.add_argument_group("evaluation and runtime")
    run.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="paper_a",
        help="paper_a (default), paper_b, demo or tiny; flags override it",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="replay a run's settings from its config.json (instead of --preset); flags given here override them",
    )
    run.add_argument("--arch", help=f"one of {', '.join(list_models())} (default {d.arch}; B: efficientnet_b4)")
    data.add_argument("--data", help="ImageFolder, fold<k>/{train,test}/ folders, or a path,label[,fold] CSV")
    data.add_argument("--out", help=f"run root (default {d.out})")
    run.add_argument("--fold", default="1", help="fold to test on, 1-based, or 'all' (a holdout split has one run)")
    run.add_argument("--num-folds", type=int, help=f"default {d.num_folds}")
    data.add_argument("--split", choices=["kfold", "holdout"], help="kfold (A) or 70/15/15 holdout (B)")
    data.add_argument(
        "--val-fraction", type=float, help=f"validation share of the training part, in (0, 1) (A: {d.val_fraction})"
    )
    data.add_argument(
        "--cal-fraction",
        type=float,
        help="share of the training part held out for calibration (temperatures, certified referral, "
        "prediction sets), never trained or selected on; written as cal_logits.npz (default 0; demo and tiny 0.1)",
    )
    data.add_argument(
        "--cal-holdout",
        type=float,
        help="k-fold: share of all images reserved before the folds as every fold's calibration cells (no fold "
        "trains, validates or tests on them), so the average of the folds' models can be certified (default 0)",
    )
    data.add_argument("--img-size", type=int, help=f"A: {d.img_size}, B: 224")
    optimisation.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    optimisation.add_argument("--epochs", type=int, help=f"maximum epochs (method A, default {d.epochs})")
    optimisation.add_argument("--lr", type=float, help=f"default {d.lr:g} (assumed: the paper's text lost it)")
    optimisation.add_argument(
        "--weight-decay", type=float, help=f"default {d.weight_decay:g} (assumed: the paper's text lost it)"
    )
    optimisation.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], help=f"default {d.optimizer}")
    optimisation.add_argument("--class-weights", choices=["balanced", "none"], help=f"default {d.class_weights}")
    augmentation.add_argument(
        "--augment",
        choices=["paper_a", "paper_b", "none"],
        help=f"training augmentation: method A's, method B's or none (default {d.augment})",
    )
    augmentation.add_argument(
        "--rotation", type=float, help=f"rotation range in degrees (default {d.rotation:g}, assumed)"
    )
    optimisation.add_argument(
        "--scheduler",
        choices=["plateau", "constant"],
        help=f"plateau: the learning rate times --plateau-factor after --plateau-patience flat epochs (default {d.scheduler})",
    )
    optimisation.add_argument("--plateau-patience", type=int, help=f"default {d.plateau_patience}")
    optimisation.add_argument("--plateau-factor", type=float, help=f"default {d.plateau_factor}")
    optimisation.add_argument("--early-stopping", type=int, help=f"patience in epochs (A: {d.early_stopping}, B: 7)")
    optimisation.add_argument(
        "--monitor",
        choices=["val_acc", "val_loss"],
        help=f"validation metric of early stopping, the schedule and best.pt (default {d.monitor})",
    )
    optimisation.add_argument(
        "--val-loss",
        choices=["weighted", "unweighted"],
        help="validation loss with or without the class weights (A: weighted, logged only; B: unweighted, as Keras's val_loss)",
    )
    data.add_argument(
        "--preprocess",
        choices=["none", "otsu"],
        help=f"otsu: method B's Otsu threshold and elliptical closing before the network (default {d.preprocess})",
    )
    data.add_argument("--otsu-foreground", choices=["dark", "bright"], help=f"default {d.otsu_foreground}")
    optimisation.add_argument("--freeze-epochs", type=int, help="head-only epochs before fine-tuning (B: 50)")
    optimisation.add_argument(
        "--unfreeze-last", type=int, help=f"layers trained in the fine-tuning stage (B: {d.unfreeze_last})"
    )
    optimisation.add_argument("--finetune-epochs", type=int, help=f"default {d.finetune_epochs}")
    optimisation.add_argument(
        "--amp", choices=["auto", "on", "off"], help="auto (default) = fp16 on CUDA, off on CPU; on = bf16 on CPU"
    )
    optimisation.add_argument("--grad-clip", type=float, help="clip the gradient norm (after unscaling)")
    runtime.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="channels-last memory format (faster convolutions on recent GPUs and on this CPU; the demo presets use it)",
    )
    optimisation.add_argument("--seed", type=int, help=f"default {d.seed}")
    data.add_argument("--workers", type=int, help=f"default {d.workers}")
    runtime.add_argument("--device", help="auto (default), cpu, cuda")
    model.add_argument(
        "--pretrained",
        nargs="?",
        const="default",
        metavar="TAG",
        help="start from a catalogued checkpoint (downloaded once, verified, cached); no TAG: the paper's. See --list-weights",
    )
    model.add_argument(
        "--list-weights", action="store_true", help="print the catalogue of pretrained checkpoints and exit"
    )
    model.add_argument("--weights", help="local checkpoint: .pt/.pth, .safetensors, BiT .npz, timm state dict")
    model.add_argument(
        "--padding",
        choices=["symmetric", "same"],
        help="same: TensorFlow's padding, for a TF-trained EfficientNet file given with --weights (default: the checkpoint's, else symmetric)",
    )
    model.add_argument("--dropout", type=float, help="dropout before the classifier (A: 0.7 / 0.5)")
    model.add_argument(
        "--mean", type=float, nargs=3, help="input mean per channel (default: what the starting weights expect)"
    )
    model.add_argument(
        "--std", type=float, nargs=3, help="input std per channel (default: what the starting weights expect)"
    )
    model.add_argument(
        "--drop-path",
        type=float,
        help=f"stochastic depth of the EfficientNets (default {d.drop_path:g}: the paper names none)",
    )
    model.add_argument(
        "--bn-momentum",
        type=float,
        help="BatchNorm momentum in PyTorch's convention (Keras's 0.99 is 0.01; default torch's 0.1, paper_b 0.01)",
    )
    optimisation.add_argument(
        "--loss-normalization",
        choices=["weights", "count"],
        help="class-weighted loss divided by the weights' sum (PyTorch, default) or by the batch size (Keras, paper_b)",
    )
    data.add_argument(
        "--group-column",
        help="manifest column with the patient / slide / sample id (default 'group', used when present)",
    )
    data.add_argument(
        "--group-pattern", help="regex whose first capture group is the group in each file name, e.g. 'patient(\\d+)'"
    )
    optimisation.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="evaluate, select and save an exponential moving average of the weights (e.g. 0.999)",
    )
    runtime.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation of the logits written after training: flip = image + h/v flips, averaged (default none); "
        "on a finished run, --resume --tta flip rewrites its logits",
    )
    data.add_argument(
        "--skip-bad", action="store_true", default=None, help="skip unreadable images instead of stopping"
    )
    data.add_argument(
        "--allow-outside-root",
        action="store_true",
        default=None,
        help="a manifest may list images outside its own folder",
    )
    run.add_argument(
        "--fold-parallel",
        action="store_true",
        help="under torchrun: each process trains its share of the folds (fold k on rank (k-1) mod N) on its own device",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs this command would start (architecture, fold, device, state, expected time) and stop",
    )
    slurm = p.add_argument_group("Slurm (--slurm-script): the resources of each array task")
    slurm.add_argument(
        "--slurm-script",
        type=Path,
        metavar="FILE",
        help="write (not submit) an sbatch script: one array task per (architecture, fold), then fuse.py and "
        "evaluate.py; submit it with: sbatch FILE",
    )
    slurm.add_argument("--slurm-archs", nargs="+", metavar="ARCH", help="architectures of the array (default: --arch)")
    slurm.add_argument("--slurm-time", default="12:00:00", help="time limit per task (default 12:00:00)")
    slurm.add_argument("--slurm-mem", default="32G", help="memory per task (default 32G)")
    slurm.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per task (default 8)")
    slurm.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per task (default 1; 0 for CPU nodes)")
    slurm.add_argument("--slurm-partition", help="partition (default: the cluster's)")
    run.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=["yes", "auto"],
        help="continue from last.pt (the same settings); --resume auto: continue when last.pt exists, else start "
        "(what a requeued Slurm task runs)",
    )
    run.add_argument("--overwrite", action="store_true", default=None, help="start again over an existing run")
    data.add_argument("--synthetic-scale", type=float, help="size of the embedded default set (default 0.08)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, fold: int) -> trainer.TrainConfig:
    """The preset (or with --config, a run's recorded settings) with the flags that were given on top."""
    given = {name: getattr(args, name) for name in given_flags(args) - {"fold", "resume"}}
    if args.config is not None:
        config = trainer.TrainConfig(**{**recorded_settings(args.config), **given, "fold": fold})
    else:
        config = preset_config(args.preset, **given, fold=fold)
    if args.resume == "auto":
        return dataclasses.replace(config, resume=(config.run_dir() / LAST_CHECKPOINT).is_file())
    return dataclasses.replace(config, resume=args.resume == "yes")


def given_flags(args: argparse.Namespace) -> set[str]:
    """The TrainConfig settings given on the command line (flags default to None)."""
    return {f.name for f in dataclasses.fields(trainer.TrainConfig) if getattr(args, f.name, None) is not None}


def parse_folds(text: str, config: trainer.TrainConfig) -> list[int]:
    """The folds to train; a holdout split (method B) is one run, so 'all' means that one."""
    if config.split == "holdout":
        if text not in ("1", "all"):
            raise ConfigError(f"--fold {text}: a holdout split has one run; leave --fold out or give 'all'")
        return [1]
    num_folds = config.num_folds
    if text == "all":
        return list(range(1, num_folds + 1))
    try:
        fold = int(text)
    except ValueError:
        raise ConfigError(f"--fold {text}: give a number 1..{num_folds} or 'all'") from None
    if not 1 <= fold <= num_folds:
        raise ConfigError(f"--fold {fold}: out of range; choose 1..{num_folds} or 'all'")
    return [fold]


def write_slurm_script(
    args: argparse.Namespace, argv: list[str], config: trainer.TrainConfig, folds: list[int]
) -> None:
    """--slurm-script FILE: the sbatch script of the runs these flags describe (slurm.py)."""
    settings = SlurmSettings(args.slurm_time, args.slurm_mem, args.slurm_cpus, args.slurm_gpus, args.slurm_partition)
    unknown = [a for a in args.slurm_archs or [] if a not in list_models()]
    if unknown:
        raise ConfigError(f"--slurm-archs {unknown[0]}: unknown; choose from {', '.join(list_models())}")
    script = batch_script(
        argv,
        args.slurm_archs or [config.arch],
        folds,
        str(config.out),
        os.getcwd(),
        sys.executable,
        str(Path(__file__).resolve().parent),
        settings,
    )
    Path(config.out).mkdir(parents=True, exist_ok=True)  # Slurm writes the tasks' logs there, and makes no folders
    atomic_write_text(args.slurm_script, script)
    args.slurm_script.chmod(0o755)
    logging.info("wrote %s; submit it with: sbatch %s", args.slurm_script, args.slurm_script)


def train(args: argparse.Namespace, argv: list[str], stop: StopRequest | None = None) -> None:
    """Every fold asked for, one after the other (the images checked once)."""
    if args.list_weights:
        print(catalogue_table())
        return
    first = build_config(args, 1)
    if args.config is not None:
        overridden = [
            f"--{name.replace('_', '-')}" for name in recorded_settings(args.config) if name in given_flags(args)
        ]
        logging.info(
            "replaying %s%s", args.config, f"; the command line overrides {', '.join(overridden)}" if overridden else ""
        )
    validate_config(first)  # before any download
    folds = parse_folds(args.fold, first)
    if args.slurm_script is not None:
        write_slurm_script(args, argv, first, folds)
        return
    if args.dry_run:
        print(plan_table([build_config(args, fold) for fold in folds]))
        return
    if first.pretrained:  # the download, with a progress line, before any training (later loads read the cache)
        fetch(find_entry(first.arch, first.pretrained), DownloadLine())
    if args.fold_parallel:
        run_fold_parallel(
            folds,
            lambda context: fold_setup.setup_fold(first, context=context),  # rank 0: the data and folds.csv
            lambda fold, context: train_fold(args, fold, None, context, stop),
            fold_setup.device_type_of(first),
        )
        return
    if first.img_size < GPU_SIZED and args.preset == "demo" and not (first.weights or first.pretrained):
        logging.warning(
            "--preset demo fine-tunes pretrained small backbones: give --weights (bash demo.sh makes them once), "
            "or train from scratch with --preset demo_scratch"
        )
    samples = None  # discovered (and every image checked) once for all folds
    for fold in folds:
        samples = train_fold(args, fold, samples, stop=stop)


def train_fold(args: argparse.Namespace, fold: int, samples=None, context=None, stop: StopRequest | None = None):
    """One fold from the flags; returns the samples it discovered (for the next fold)."""
    config = build_config(args, fold)
    setup = fold_setup.setup_fold(config, samples, context)
    parts = fold_setup.build_fold(config, setup)
    line = ProgressLine(config)
    fold_trainer = trainer.FoldTrainer(setup, parts, progress=line, on_epoch_end=line.epoch_done, stop=stop)
    logging.info("done: %s", fold_trainer.run())
    return setup.samples


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    stop = StopRequest()  # SIGTERM/SIGUSR1: the step in progress ends, last.pt records it, exit 75
    try:
        return cli.run(
            lambda: train(args, argv, stop), timed=True, interrupted="interrupted; continue with --resume", stop=stop
        )
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
