"""The settings of a training run: one dataclass, the named presets, and their checks.

Every default lives here once. ``TrainConfig``'s defaults are method A's (Sec. 2.4 of the
fusion paper); a preset changes some of them; a flag the user gives changes one more.
``train.py`` passes only the flags that were given, so an absent flag never overrides a
preset.

The paper's text lost the values of the learning rate, the weight decay and the rotation
range; 1e-4, 1e-4 and +-15 degrees are assumed values (common for AdamW fine-tuning and
for microscopy rotation), not the paper's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .engine import TTA_MODES
from .errors import ConfigError
from .models import get_spec
from .models.normalization import IMAGENET_MEAN, IMAGENET_STD
from .transforms import PAD_COLOR


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are method A's (the paper's, or assumed where its text lost them)."""

    arch: str = "resnet50v2"
    data: str | None = None  # None: the embedded synthetic sperm18 set
    out: str = "runs"
    fold: int = 1
    num_folds: int = 5
    split: str = "kfold"  # kfold | holdout
    val_fraction: float = 0.1
    cal_fraction: float = 0.0  # held out for calibration (temperatures, referral, sets); never trained or selected on
    cal_holdout: float = 0.0  # k-fold: a share of all images reserved before the folds, every fold's calibration cells
    test_fraction: float = 0.15  # holdout only
    img_size: int = 240
    batch_size: int = 8
    epochs: int = 100
    lr: float = 1e-4  # assumed (lost in the paper's text)
    weight_decay: float = 1e-4  # assumed (lost in the paper's text)
    optimizer: str = "adamw"
    class_weights: str = "balanced"  # balanced | none
    augment: str = "paper_a"  # paper_a | paper_b | none
    rotation: float = 15.0  # assumed (lost in the paper's text)
    scheduler: str = "plateau"  # plateau | constant
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stopping: int = 10
    monitor: str = "val_acc"  # val_acc | val_loss
    # The validation loss as Keras computes it is unweighted (class_weight applies to the
    # training loss only): method B stops on that one. Method A monitors accuracy and logs
    # the weighted loss, the same objective as its training loss, so the two curves compare.
    val_loss: str = "weighted"  # weighted | unweighted
    preprocess: str = "none"  # none | otsu
    otsu_foreground: str = "dark"
    freeze_epochs: int = 0  # > 0: method B's head-only stage first
    unfreeze_last: int = 60
    finetune_epochs: int = 30
    amp: str = "auto"
    grad_clip: float | None = None
    channels_last: bool = False
    seed: int = 42
    workers: int = 2
    device: str = "auto"
    pretrained: str | None = None  # a tag of models/catalogue.py; "default": the paper's checkpoint
    weights: str | None = None
    # "same": TensorFlow's padding for TF-trained EfficientNet checkpoints; None: what the
    # catalogued checkpoint needs, else symmetric (PyTorch's).
    padding: str | None = None
    dropout: float | None = None
    # Input normalisation; None: what the starting weights expect (0.5/0.5 for BiT and
    # TF-trained EfficientNetV2, ImageNet's for torchvision's), ImageNet's from scratch.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # Stochastic depth of the EfficientNets. The paper names only dropout (0.7) and the
    # checkpoint it fine-tunes runs without drop-path, so none by default (torchvision's
    # EfficientNetV2-S builder would silently use up to 0.2).
    drop_path: float = 0.0
    # Keras's conventions, for method B: its BatchNorm momentum 0.99 (torch's 0.01; None keeps
    # torch's 0.1), and its class-weighted loss sum(w_i l_i) / N ("count") where PyTorch's
    # weighted mean is sum(w_i l_i) / sum(w_i) ("weights").
    bn_momentum: float | None = None
    loss_normalization: str = "weights"
    ema: float | None = None  # decay of an exponential moving average of the weights used for evaluation (e.g. 0.999)
    tta: str = "none"  # test-time augmentation of the written logits: none | flip (image + both flips, averaged)
    skip_bad: bool = False
    allow_outside_root: bool = False  # manifest paths may leave the manifest's folder
    group_column: str = "group"  # a manifest's patient / slide / sample column, used when present
    group_pattern: str | None = None  # regex with one capture group: the group in each file name
    resume: bool = False
    overwrite: bool = False
    pad_color: tuple[int, int, int] = PAD_COLOR
    synthetic_scale: float | None = None  # size of the embedded default set

    def run_dir(self) -> Path:
        return Path(self.out) / self.arch / (f"fold{self.fold}" if self.split == "kfold" else "holdout")


# Settings that change how a run is carried out, not what it trains: free to differ on --resume.
# ``tta`` only changes the logits written from best.pt at the end, so resuming a finished run
# with another --tta rewrites its logits files (and config.json) with it.
OPERATIONAL_SETTINGS = frozenset(
    {"resume", "overwrite", "workers", "device", "skip_bad", "data", "out", "tta", "allow_outside_root"}
)


# What each preset changes from TrainConfig's defaults; the only place these values live.
# What the CPU demo presets share (their comments are at the presets).
_CPU_DEMO = dict(img_size=64, batch_size=32, workers=0, channels_last=True, cal_fraction=0.1)

PRESETS: dict[str, dict] = {
    # Method A as published: the defaults, and the ImageNet mean/std its text names (l. 62), also
    # with --pretrained (outside this preset the starting weights' own statistics are the default).
    "paper_a": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # Method B (Otsu + two-stage EfficientNet-B4): head only for up to 50 epochs, then the
    # last 60 layers; early stopping on validation loss; a 70/15/15 holdout split.
    "paper_b": dict(
        arch="efficientnet_b4",
        img_size=224,
        preprocess="otsu",
        augment="paper_b",
        scheduler="constant",
        monitor="val_loss",
        val_loss="unweighted",
        early_stopping=7,
        freeze_epochs=50,
        unfreeze_last=60,
        finetune_epochs=30,
        split="holdout",
        val_fraction=0.15,
        test_fraction=0.15,
        drop_path=0.2,  # Keras's EfficientNetB4 drop_connect_rate, which the paper's model keeps
        bn_momentum=0.01,  # Keras's 0.99 in PyTorch's convention
        loss_normalization="count",  # Keras's class-weighted loss
    ),
    # The CPU demo (demo.sh): the small backbones fine-tuned at 64 px from their pretrained
    # checkpoints (spermfuse/pretrain.py), in minutes; demo_scratch trains them from scratch.
    # Channels-last: +9-17 % training-step speed on this 2-core CPU; bf16 autocast was slower
    # or mixed (docs/cpu_speedups.md), so it stays off. No loader worker: on two cores a
    # worker process competes with the training step (a fold took 21 s without, 25 s with one).
    # A tenth of each fold's training images is held out for the promises (issue 23): the
    # temperatures, the referral threshold and the prediction sets are fitted on cells that
    # neither the gradient nor the choice of the epoch saw.
    "demo": dict(**_CPU_DEMO, epochs=10, lr=1e-3, early_stopping=10),
    "demo_scratch": dict(**_CPU_DEMO, epochs=18, lr=2e-3, early_stopping=18),
    # A smoke test in seconds (the test suite's demo run).
    "tiny": dict(img_size=32, epochs=1, lr=3e-3, num_folds=2, val_fraction=0.2, cal_fraction=0.1, workers=0),
}


def preset_config(preset: str = "paper_a", **overrides) -> TrainConfig:
    """The ``preset``'s settings with ``overrides`` on top (only the settings actually given)."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset}: unknown; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    return TrainConfig(**{**PRESETS[preset], **overrides})


NOT_REPLAYED = {"fold", "resume", "overwrite"}  # what a replay of a run's config.json takes from the command


def recorded_settings(path: str | Path) -> dict:
    """The TrainConfig settings a run's ``config.json`` records (``train.py --config FILE``),
    without the fold and the resume/overwrite choice; lists back to tuples."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"--config {path}: not a readable config.json ({error})") from None
    if not isinstance(record, dict) or "arch" not in record:
        raise ConfigError(f"--config {path}: not a run's config.json (no 'arch'); give <run>/fold<k>/config.json")
    names = {f.name for f in fields(TrainConfig)} - NOT_REPLAYED
    return {key: tuple(value) if isinstance(value, list) else value for key, value in record.items() if key in names}


def _finite(value: float) -> bool:
    return math.isfinite(value)


def validate_config(config: TrainConfig) -> None:
    """Refuse settings that cannot work, naming the flag."""
    get_spec(config.arch)  # raises with the list of valid names
    checks = [
        (config.batch_size >= 1, "--batch-size must be >= 1"),
        (config.epochs >= 1, "--epochs must be >= 1"),
        (config.img_size >= 16, "--img-size must be >= 16"),
        # Early stopping and model selection need validation images: 0 is refused, not ignored.
        (
            0.0 < config.val_fraction < 1.0,
            "--val-fraction must be in (0, 1): training selects its best epoch on the validation set",
        ),
        (config.split in ("kfold", "holdout"), "--split must be kfold or holdout"),
        (config.monitor in ("val_acc", "val_loss"), "--monitor must be val_acc or val_loss"),
        (config.class_weights in ("balanced", "none"), "--class-weights must be balanced or none"),
        (config.preprocess in ("none", "otsu"), "--preprocess must be none or otsu"),
        (config.scheduler in ("plateau", "constant"), "--scheduler must be plateau or constant"),
        (0.0 <= config.drop_path < 1.0, "--drop-path must be in [0, 1)"),
        (
            config.bn_momentum is None or (_finite(config.bn_momentum) and 0.0 < config.bn_momentum <= 1.0),
            f"--bn-momentum {config.bn_momentum}: PyTorch's convention, in (0, 1] (Keras's 0.99 is 0.01)",
        ),
        (config.loss_normalization in ("weights", "count"), "--loss-normalization must be weights or count"),
        (config.padding in (None, "symmetric", "same"), "--padding must be symmetric or same"),
        (not (config.pretrained and config.weights), "give either --pretrained or --weights PATH, not both"),
        (config.val_loss in ("weighted", "unweighted"), "--val-loss must be weighted or unweighted"),
        (config.tta in TTA_MODES, f"--tta must be one of {', '.join(TTA_MODES)}"),
        (config.ema is None or 0.0 < config.ema < 1.0, f"--ema {config.ema}: the decay must be in (0, 1), e.g. 0.999"),
        (
            config.split == "holdout" or config.num_folds >= 2,
            f"--num-folds {config.num_folds}: cross-validation needs at least 2 folds",
        ),
        (_finite(config.lr) and config.lr > 0, f"--lr {config.lr}: give a positive learning rate, e.g. 1e-4"),
        (
            _finite(config.weight_decay) and config.weight_decay >= 0,
            f"--weight-decay {config.weight_decay}: give a value >= 0",
        ),
        (config.workers >= 0, f"--workers {config.workers}: give 0 (load in the main process) or more"),
        (
            config.dropout is None or (_finite(config.dropout) and 0.0 <= config.dropout < 1.0),
            f"--dropout {config.dropout}: give a probability in [0, 1)",
        ),
        (
            _finite(config.plateau_factor) and 0.0 < config.plateau_factor < 1.0,
            f"--plateau-factor {config.plateau_factor}: the learning rate is multiplied by it, give a value in (0, 1)",
        ),
        (config.plateau_patience >= 0, f"--plateau-patience {config.plateau_patience}: give 0 or more epochs"),
        (0 <= config.seed < 2**32, f"--seed {config.seed}: give an integer in 0..{2**32 - 1}"),
        (
            config.grad_clip is None or (_finite(config.grad_clip) and config.grad_clip > 0),
            f"--grad-clip {config.grad_clip}: the largest gradient norm must be > 0 (leave the flag out for no clipping)",
        ),
        (config.early_stopping >= 1, f"--early-stopping {config.early_stopping}: give a patience of 1 or more epochs"),
        (
            _finite(config.rotation) and config.rotation >= 0,
            f"--rotation {config.rotation}: give a range in degrees >= 0",
        ),
        (_finite(config.val_fraction), f"--val-fraction {config.val_fraction}: give a number in (0, 1)"),
        (
            _finite(config.cal_fraction) and 0.0 <= config.cal_fraction < 0.5,
            f"--cal-fraction {config.cal_fraction}: give a share in [0, 0.5), e.g. 0.1 (0: no calibration split)",
        ),
        (
            _finite(config.cal_holdout) and 0.0 <= config.cal_holdout < 0.5,
            f"--cal-holdout {config.cal_holdout}: give a share in [0, 0.5), e.g. 0.1 (0: none)",
        ),
        (
            not (config.cal_holdout > 0 and config.cal_fraction > 0),
            "--cal-holdout and --cal-fraction: give one (the holdout is every fold's calibration set; "
            "--cal-fraction holds out cells per fold); a preset's --cal-fraction goes with --cal-fraction 0",
        ),
        (
            not (config.cal_holdout > 0 and config.split == "holdout"),
            "--cal-holdout is for k-fold runs; a holdout split reserves its calibration cells with --cal-fraction",
        ),
        (
            config.split == "kfold"
            or (
                0.0 < config.test_fraction < 1.0
                and config.val_fraction + config.test_fraction + config.cal_fraction < 1.0
            ),
            f"--val-fraction {config.val_fraction}, the test fraction {config.test_fraction} and --cal-fraction {config.cal_fraction}: together below 1",
        ),
        (
            config.freeze_epochs >= 0 and config.finetune_epochs >= 1 and config.unfreeze_last >= 1,
            "--freeze-epochs must be >= 0, --finetune-epochs and --unfreeze-last >= 1",
        ),
        (
            config.synthetic_scale is None or (_finite(config.synthetic_scale) and config.synthetic_scale > 0),
            f"--synthetic-scale {config.synthetic_scale}: give a value > 0",
        ),
        (
            config.mean is None or all(_finite(m) for m in config.mean),
            f"--mean {config.mean}: give three finite numbers",
        ),
        (
            config.std is None or all(_finite(v) and v > 0 for v in config.std),
            f"--std {config.std}: every value must be > 0 (the input is divided by it)",
        ),
        (
            not (config.resume and config.overwrite),
            "--resume continues a run and --overwrite starts it again: give one of them",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
