"""The settings of a training run: one dataclass, the named presets, and their checks.

Every default lives here once. ``TrainConfig``'s defaults are method A's (Sec. 2.4 of the
fusion paper); a preset changes some of them; a flag the user gives changes one more.
``train.py`` passes only the flags that were given, so an absent flag never overrides a
preset.

The paper's text lost the values of the learning rate, the weight decay and the rotation
range; 1e-4, 1e-4 and +-15 degrees are assumed values (common for AdamW fine-tuning and
for microscopy rotation), not the paper's.

Long because it is a list: every setting with its help, and every preset with why it differs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from ..core.engine import TTA_MODES
from ..core.errors import ConfigError
from ..core.models import REGISTRY, get_spec
from ..core.models.efficientnet import PADDINGS
from ..core.models.registry import required_input_size
from ..core.normalization import IMAGENET_MEAN, IMAGENET_STD
from ..core.transforms import PAD_COLOR, PAPER_IMG_SIZE
from ..flags import setting
from ..runtime import DEVICE_HELP
from ..store.output_folder import check_plain_name
from ..store.run_folder import model_run_dir

# The sections of train.py --help that the settings' flags are listed under.
SECTIONS = {
    "run": "what to train",
    "data": "data and splits",
    "model": "model and starting weights",
    "optimisation": "optimisation",
    "augmentation": "augmentation",
    "runtime": "evaluation and runtime",
}


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are method A's (the paper's, or assumed where its
    text lost them). Each flag's help is here, beside its default (``flags.setting``)."""

    arch: str = setting(
        "resnet50v2",
        f"backbone: {', '.join(REGISTRY)}, or tv:NAME, any torchvision classifier (train.py --list-models)",
        "run",
    )
    name: str | None = setting(
        None,
        "the member's name: its folder under --out and its name in fuse.py --models (default: --arch); two runs of "
        "one architecture (other sizes or weights, one --seed: it also draws the validation cells) fuse as two members",
        "run",
    )
    data: str | None = setting(
        None,
        "ImageFolder, fold<k>/{train,test}/ folders, or a path,label[,fold] CSV (default: the embedded synthetic "
        "sperm18 set, generated once)",
        "data",
    )
    out: str = setting("runs", "run root", "data")
    fold: int = 1  # train.py's --fold takes 'all' too
    num_folds: int = setting(5, "folds of the cross-validation", "run")
    split: str = setting("kfold", "kfold (A) or a 70/15/15 holdout (B)", "data", choices=["kfold", "holdout"])
    val_fraction: float = setting(0.1, "validation share of the training part, in (0, 1)", "data")
    cal_fraction: float = setting(
        0.0,
        "share of the training part held out for calibration (temperatures, certified referral, prediction sets), "
        "never trained or selected on; written as cal_logits.npz",
        "data",
    )
    cal_holdout: float = setting(
        0.0,
        "k-fold: share of all images reserved before the folds as every fold's calibration cells (no fold trains, "
        "validates or tests on them), so the average of the folds' models can be certified",
        "data",
    )
    test_fraction: float = 0.15  # holdout only
    img_size: int = setting(PAPER_IMG_SIZE, "input side in pixels (letterboxed)", "data")
    batch_size: int = setting(8, "images per step", "optimisation")
    epochs: int = setting(
        100, "maximum epochs (one stage; with --freeze-epochs, see --finetune-epochs)", "optimisation"
    )
    lr: float = setting(1e-4, "learning rate (assumed: the paper's text lost it)", "optimisation")
    weight_decay: float = setting(1e-4, "weight decay (assumed: the paper's text lost it)", "optimisation")
    optimizer: str = setting("adamw", "optimiser", "optimisation", choices=["adamw", "adam", "sgd"])
    class_weights: str = setting("balanced", "class weights of the loss", "optimisation", choices=["balanced", "none"])
    augment: str = setting(
        "paper_a",
        "training augmentation: method A's, method B's or none",
        "augmentation",
        choices=["paper_a", "paper_b", "none"],
    )
    rotation: float = setting(15.0, "rotation range in degrees (assumed: the paper's text lost it)", "augmentation")
    scheduler: str = setting(
        "plateau",
        "plateau: the learning rate times --plateau-factor after --plateau-patience flat epochs",
        "optimisation",
        choices=["plateau", "constant"],
    )
    plateau_factor: float = setting(0.5, "the plateau schedule's factor", "optimisation")
    plateau_patience: int = setting(3, "the plateau schedule's patience in epochs", "optimisation")
    early_stopping: int = setting(10, "patience in epochs", "optimisation")
    monitor: str = setting(
        "val_acc",
        "validation metric of early stopping, the schedule and best.pt",
        "optimisation",
        choices=["val_acc", "val_loss"],
    )
    # The validation loss as Keras computes it is unweighted (class_weight applies to the
    # training loss only): method B stops on that one. Method A monitors accuracy and logs
    # the weighted loss, the same objective as its training loss, so the two curves compare.
    val_loss: str = setting(
        "weighted",
        "validation loss with or without the class weights (unweighted: Keras's val_loss)",
        "optimisation",
        choices=["weighted", "unweighted"],
    )
    preprocess: str = setting(
        "none",
        "otsu: method B's Otsu threshold and elliptical closing before the network",
        "data",
        choices=["none", "otsu"],
    )
    otsu_foreground: str = setting("dark", "the cells' side of the Otsu threshold", "data", choices=["dark", "bright"])
    freeze_epochs: int = setting(0, "head-only epochs before fine-tuning (method B's first stage)", "optimisation")
    unfreeze_last: int = setting(60, "layers trained in the fine-tuning stage", "optimisation")
    finetune_epochs: int = setting(30, "epochs of the fine-tuning stage", "optimisation")
    finetune_lr: float | None = setting(
        None, "learning rate of the fine-tuning stage (default: --lr, as method B keeps one rate)", "optimisation"
    )
    amp: str = setting(
        "auto", "auto = fp16 on CUDA, off on CPU; on = bf16 on CPU", "optimisation", choices=["auto", "on", "off"]
    )
    grad_clip: float | None = setting(None, "clip the gradient norm (after unscaling)", "optimisation")
    channels_last: bool = setting(
        False, "channels-last memory format (faster convolutions on recent GPUs and on this CPU)", "runtime"
    )
    seed: int = setting(42, "random seed of the split, the weights and the batches", "optimisation")
    workers: int = setting(2, "data loader processes", "data")
    device: str = setting("auto", DEVICE_HELP, "runtime")
    pretrained: str | None = setting(
        None,
        "start from a catalogued checkpoint (downloaded once, verified, cached); no TAG: the paper's. See --list-weights",
        "model",
        nargs="?",
        const="default",
        metavar="TAG",
    )
    weights: str | None = setting(None, "local checkpoint: .pt/.pth, .safetensors, BiT .npz, timm state dict", "model")
    padding: str | None = setting(
        None,
        "same: TensorFlow's padding, for a TF-trained EfficientNet file given with --weights (default: the "
        "checkpoint's, else symmetric)",
        "model",
        choices=PADDINGS,
    )
    dropout: float | None = setting(
        None, "dropout before the classifier (default: the architecture's, A: 0.7 / 0.5)", "model"
    )
    mean: tuple[float, float, float] | None = setting(
        None, "input mean per channel (default: what the starting weights expect, ImageNet's from scratch)", "model"
    )
    std: tuple[float, float, float] | None = setting(
        None, "input std per channel (default: what the starting weights expect, ImageNet's from scratch)", "model"
    )
    # The paper names only dropout (0.7) and the checkpoint it fine-tunes runs without
    # drop-path, so none by default (torchvision's EfficientNetV2-S builder would use up to 0.2).
    drop_path: float = setting(0.0, "stochastic depth of the EfficientNets", "model")
    bn_momentum: float | None = setting(
        None, "BatchNorm momentum in PyTorch's convention (Keras's 0.99 is 0.01; default torch's 0.1)", "model"
    )
    # PyTorch's weighted mean is sum(w_i l_i) / sum(w_i) ("weights"); Keras's class-weighted
    # loss is sum(w_i l_i) / N ("count").
    loss_normalization: str = setting(
        "weights",
        "class-weighted loss divided by the weights' sum (PyTorch) or by the batch size (Keras)",
        "optimisation",
        choices=["weights", "count"],
    )
    ema: float | None = setting(
        None,
        "evaluate, select and save an exponential moving average of the weights (e.g. 0.999)",
        "optimisation",
        metavar="DECAY",
    )
    tta: str = setting(
        "none",
        "test-time augmentation of the logits written after training: flip = image + h/v flips, averaged; on a "
        "finished run, --resume --tta flip rewrites its logits",
        "runtime",
        choices=TTA_MODES,
    )
    skip_bad: bool = setting(False, "skip unreadable images instead of stopping", "data")
    allow_outside_root: bool = setting(False, "a manifest may list images outside its own folder", "data")
    duplicates: str = setting(
        "error",
        "an image found again under another class (pixel- or near-identical): error stops naming both files, "
        "drop-conflicts drops every image of such a group, keep keeps them (copies always stay on one side of a split)",
        "data",
        choices=["error", "drop-conflicts", "keep"],
    )
    group_column: str = setting(
        "group", "manifest column with the patient / slide / sample id, used when present", "data"
    )
    group_pattern: str | None = setting(
        None, "regex whose first capture group is the group in each file name, e.g. 'patient(\\d+)'", "data"
    )
    resume: bool = False  # train.py's --resume takes 'auto' too
    overwrite: bool = setting(False, "start again over an existing run", "run")
    pad_color: tuple[int, int, int] = PAD_COLOR
    synthetic_scale: float | None = setting(None, "size of the embedded default set (default 0.08)", "data")

    @property
    def member(self) -> str:
        """The member's name: --name, else the architecture."""
        return self.name or self.arch

    def run_dir(self) -> Path:
        """The run's folder: under ``out``, by member and, in k-fold runs, by fold."""
        return model_run_dir(self.out, self.member, self.fold if self.split == "kfold" else None)


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
    # checkpoints (spermfuse/training/pretrain.py), in minutes; demo_scratch trains them from scratch.
    # Channels-last: +9-17 % training-step speed on this 2-core CPU; bf16 autocast was slower
    # or mixed (docs/cpu_speedups.md), so it stays off. No loader worker: on two cores a
    # worker process competes with the training step (a fold took 21 s without, 25 s with one).
    # A tenth of each fold's training images is held out for the promises (issue 23): the
    # temperatures, the referral threshold and the prediction sets are fitted on cells that
    # neither the gradient nor the choice of the epoch saw.
    "demo": dict(**_CPU_DEMO, epochs=10, lr=1e-3, early_stopping=10),
    "demo_scratch": dict(**_CPU_DEMO, epochs=18, lr=2e-3, early_stopping=18),
    # ImageNet-initialised torchvision members on a CPU (demo.sh --preset cpu; measured on HuSHeM
    # in docs/REAL_DATA.md): the new head alone for 3 epochs at 1e-3, then every layer at 5e-4.
    # On HuSHeM's folds 1-2 with the MobileNetV2 stand-in this beat every layer at 1e-4 after the
    # head (the first recipe tried) and every layer from the start at 1e-3 or 3e-4.
    # No channels-last: it slowed MobileNetV2's training step on this 2-core CPU.
    "cpu": dict(
        img_size=128,
        batch_size=16,
        workers=0,
        cal_fraction=0.1,
        rotation=180.0,
        lr=1e-3,
        freeze_epochs=3,
        finetune_lr=5e-4,
        finetune_epochs=17,
        unfreeze_last=10_000,  # every layer
        early_stopping=20,
    ),
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


def folds_to_train(text: str, config: TrainConfig) -> list[int]:
    """The folds that ``train.py --fold TEXT`` trains; a holdout split (method B) is one run, so 'all' means that one."""
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
    if config.name is not None:
        check_plain_name("--name", config.name, "mobilenet_v2_seed1")
    checks = [
        (config.batch_size >= 1, "--batch-size must be >= 1"),
        (config.epochs >= 1, "--epochs must be >= 1"),
        (config.img_size >= 16, "--img-size must be >= 16"),
        (
            required_input_size(config.arch) in (None, config.img_size),
            f"--img-size {config.img_size}: {config.arch} takes {required_input_size(config.arch)} px inputs only",
        ),
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
        (config.padding in (None, *PADDINGS), f"--padding must be one of {', '.join(PADDINGS)}"),
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
            config.finetune_lr is None or (_finite(config.finetune_lr) and config.finetune_lr > 0),
            f"--finetune-lr {config.finetune_lr}: give a positive learning rate, e.g. 1e-4",
        ),
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
