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
import sys
from pathlib import Path

from spermfuse import cli, distributed, flags
from spermfuse.core.errors import ConfigError
from spermfuse.core.models import list_models
from spermfuse.preemption import StopRequest
from spermfuse.store.catalogue import catalogue_table, find_entry
from spermfuse.store.download import fetch
from spermfuse.store.run_folder import LAST_CHECKPOINT
from spermfuse.training import fold_setup, trainer
from spermfuse.training.config import (
    PRESETS,
    SECTIONS,
    TrainConfig,
    folds_to_train,
    preset_config,
    recorded_settings,
    validate_config,
)
from spermfuse.training.fold_parallel import run_fold_parallel
from spermfuse.training.progress_line import GPU_SIZED, DownloadLine, ProgressLine
from spermfuse.training.run_plan import plan_table
from spermfuse.training.slurm import SlurmSettings, write_batch_script


def parse_args(argv=None) -> argparse.Namespace:
    """The settings' flags come from their fields (``TrainConfig``, ``SlurmSettings``): all default
    to None, so only the flags given override the preset (``spermfuse/training/config.py``)."""
    p = cli.argument_parser(__doc__)
    sections = {name: p.add_argument_group(title) for name, title in SECTIONS.items()}
    run = sections["run"]
    run.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="paper_a",
        help="the settings to start from (default paper_a); flags override them",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="replay a run's settings from its config.json (instead of --preset); flags given here override them",
    )
    run.add_argument("--fold", default="1", help="fold to test on, 1-based, or 'all' (a holdout split has one run)")
    run.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=["yes", "auto"],
        help="continue from last.pt (the same settings); --resume auto: continue when last.pt exists, else start "
        "(what a requeued Slurm task runs)",
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
    sections["model"].add_argument(
        "--list-weights", action="store_true", help="print the catalogue of pretrained checkpoints and exit"
    )
    sections["model"].add_argument(
        "--list-models", action="store_true", help="print every --arch name (the registry's and tv:NAME) and exit"
    )
    flags.add_setting_flags(p, TrainConfig, sections, PRESETS)
    slurm = p.add_argument_group("Slurm (--slurm-script): the resources of each array task")
    slurm.add_argument(
        "--slurm-script",
        type=Path,
        metavar="FILE",
        help="write (not submit) an sbatch script: one array task per (architecture, fold), then fuse.py and "
        "evaluate.py; submit it with: sbatch FILE",
    )
    slurm.add_argument("--slurm-archs", nargs="+", metavar="ARCH", help="architectures of the array (default: --arch)")
    flags.add_setting_flags(p, SlurmSettings, {"slurm": slurm}, prefix="slurm-")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, fold: int) -> TrainConfig:
    """The preset (or with --config, a run's recorded settings) with the flags that were given on top."""
    given = flags.given_settings(args, TrainConfig)
    if args.config is not None:
        config = TrainConfig(**{**recorded_settings(args.config), **given, "fold": fold})
    else:
        config = preset_config(args.preset, **given, fold=fold)
    if args.resume == "auto":
        return dataclasses.replace(config, resume=(config.run_dir() / LAST_CHECKPOINT).is_file())
    return dataclasses.replace(config, resume=args.resume == "yes")


def write_slurm_script(args: argparse.Namespace, argv: list[str], config: TrainConfig, folds: list[int]) -> None:
    """--slurm-script FILE: the sbatch script of the runs these flags describe (slurm.py)."""
    settings = SlurmSettings(**flags.given_settings(args, SlurmSettings, prefix="slurm-"))
    archs = args.slurm_archs or [config.arch]
    if config.name is not None and len(archs) > 1:
        raise ConfigError(
            f"--name {config.name}: one folder cannot hold {len(archs)} architectures; drop --name or give one --slurm-archs"
        )
    write_batch_script(args.slurm_script, argv, archs, folds, config.out, Path(__file__).resolve().parent, settings)
    logging.info("wrote %s; submit it with: sbatch %s", args.slurm_script, args.slurm_script)


def train(args: argparse.Namespace, argv: list[str], stop: StopRequest | None = None) -> None:
    """Every fold asked for, one after the other (the images checked once)."""
    if args.list_weights:
        print(catalogue_table())
        return
    if args.list_models:
        print("\n".join(list_models()))
        return
    first = build_config(args, 1)
    if args.config is not None:
        given = flags.given_settings(args, TrainConfig)
        overridden = [f"--{name.replace('_', '-')}" for name in recorded_settings(args.config) if name in given]
        logging.info(
            "replaying %s%s", args.config, f"; the command line overrides {', '.join(overridden)}" if overridden else ""
        )
    validate_config(first)  # before any download
    folds = folds_to_train(args.fold, first)
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
    if args.preset == "cpu" and not (first.weights or first.pretrained):
        logging.warning(
            "--preset cpu fine-tunes ImageNet weights; none given, so %s starts from random weights: add --pretrained "
            "(downloaded once: --list-weights) or --weights FILE",
            first.arch,
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
