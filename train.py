"""Train one fold (or all five) of a backbone as the papers describe.

    python train.py --fold 2 --arch resnet50v2            # method A, paper settings
    python train.py --fold all --arch efficientnetv2_s
    python train.py --preset paper_b --data ALL/           # method B: Otsu + two-stage EfficientNet-B4
    torchrun --nproc_per_node=2 train.py --fold 1          # DistributedDataParallel

Without --data, the embedded synthetic sperm18 set is generated (once) and used.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from spermfuse import distributed, trainer
from spermfuse.errors import ConfigError, SpermfuseError, user_message
from spermfuse.models import list_models


def parse_args(argv=None) -> argparse.Namespace:
    d = trainer.TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["paper_a", "paper_b"], default="paper_a", help="method A (default) or B; flags override it")
    p.add_argument("--arch", default=None, help=f"one of {', '.join(list_models())} (default resnet50v2; B: efficientnet_b4)")
    p.add_argument("--data", default=None, help="ImageFolder, fold<k>/{train,test}/ folders, or a path,label[,fold] CSV")
    p.add_argument("--out", default=d.out, help="run root (default runs/)")
    p.add_argument("--fold", default="1", help="fold to test on, 1-based, or 'all'")
    p.add_argument("--num-folds", type=int, default=d.num_folds)
    p.add_argument("--split", choices=["kfold", "holdout"], default=None, help="kfold (A) or 70/15/15 holdout (B)")
    p.add_argument("--val-fraction", type=float, default=None, help="validation share of the training part (A: 0.1)")
    p.add_argument("--img-size", type=int, default=None, help="A: 240, B: 224")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (method A)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=d.optimizer)
    p.add_argument("--class-weights", choices=["balanced", "none"], default=d.class_weights)
    p.add_argument("--augment", choices=["paper_a", "paper_b", "none"], default=None)
    p.add_argument("--rotation", type=float, default=d.rotation, help="rotation range in degrees")
    p.add_argument("--scheduler", choices=["plateau", "constant"], default=None)
    p.add_argument("--plateau-patience", type=int, default=d.plateau_patience)
    p.add_argument("--plateau-factor", type=float, default=d.plateau_factor)
    p.add_argument("--early-stopping", type=int, default=None, help="patience in epochs (A: 10, B: 7)")
    p.add_argument("--monitor", choices=["val_acc", "val_loss"], default=None)
    p.add_argument("--preprocess", choices=["none", "otsu"], default=None)
    p.add_argument("--otsu-foreground", choices=["dark", "bright"], default=d.otsu_foreground)
    p.add_argument("--freeze-epochs", type=int, default=None, help="head-only epochs before fine-tuning (B: 50)")
    p.add_argument("--unfreeze-last", type=int, default=d.unfreeze_last, help="layers trained in the fine-tuning stage (B: 60)")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--amp", choices=["auto", "on", "off"], default=d.amp, help="auto = fp16 on CUDA, off on CPU; on = bf16 on CPU")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm (after unscaling)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda")
    p.add_argument("--pretrained", action="store_true", help="download ImageNet weights (torchvision models)")
    p.add_argument("--weights", default=None, help="local checkpoint: .pt/.pth, BiT .npz, timm state dict")
    p.add_argument("--dropout", type=float, default=None, help="dropout before the classifier (A: 0.7 / 0.5)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--resume", action="store_true", help="continue from last.pt")
    p.add_argument("--overwrite", action="store_true", help="start again over an existing run")
    p.add_argument("--synthetic-scale", type=float, default=None, help="size of the embedded default set (default 0.08)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, fold: int) -> trainer.TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(trainer.TrainConfig) if getattr(args, f.name, None) is not None}
    values["fold"] = fold
    if args.preset == "paper_b":
        return trainer.method_b_config(**values)
    return trainer.TrainConfig(**values)


def parse_folds(text: str, num_folds: int) -> list[int]:
    if text == "all":
        return list(range(1, num_folds + 1))
    try:
        fold = int(text)
    except ValueError:
        raise ConfigError(f"--fold {text}: give a number 1..{num_folds} or 'all'") from None
    if not 1 <= fold <= num_folds:
        raise ConfigError(f"--fold {fold}: out of range; choose 1..{num_folds} or 'all'")
    return [fold]


class ProgressLine:
    """A live per-batch line on an interactive terminal; silent otherwise."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, batch: int, batches: int, rate: float) -> None:
        if not self.live:
            return
        if batch == 1:
            self.start = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        eta = elapsed / batch * (batches - batch)
        end = "\n" if batch == batches else ""
        sys.stderr.write(f"\r  batch {batch}/{batches}  {rate:6.1f} img/s  ETA {eta:5.0f} s" + end)
        sys.stderr.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        folds = parse_folds(args.fold, args.num_folds)
        samples = None  # discovered (and every image checked) once for all folds
        for fold in folds:
            fold_trainer = trainer.FoldTrainer(build_config(args, fold), progress=ProgressLine(), samples=samples)
            samples = fold_trainer.samples
            logging.info("done: %s", fold_trainer.run())
    except (SpermfuseError, OSError) as error:
        if user_message(error) is None:
            raise  # a bug, not bad input: keep the traceback
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
