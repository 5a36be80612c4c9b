"""What training a fold needs before its first step, made by the caller (train.py, train_fold):
the process group, device and seeds, the data and its split (:func:`setup_fold`), then the
network with its starting weights, the input pipeline, the loaders and the loss
(:func:`build_fold`). Each has side effects (a process group, folds.csv, a download of
pretrained weights); :class:`~spermfuse.training.trainer.FoldTrainer` only reads what they made.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..core import engine
from ..core.errors import ConfigError
from ..core.logits import split_digest
from ..core.models import LoadReport, create_model
from ..core.transforms import IMAGENET_MEAN, IMAGENET_STD, PipelineSpec, from_spec
from ..data import folders, splits
from ..data.loaders import ImageDataset, class_weights, make_loader
from ..runtime import resolve_device, seed_everything
from ..store.output_folder import refuse_overlap
from ..store.pretrained import load_initial_weights, resolve_padding
from ..synthetic.cached_sets import ensure_default_data
from .config import TrainConfig, validate_config

log = logging.getLogger(__name__)


@dataclass
class FoldSetup:
    """The process group and the device, the seeded random generators, the data (generated on
    first use) and its split (folds.csv written once). Made by :func:`setup_fold`."""

    context: distributed.DistributedContext
    device: torch.device
    samples: folders.Samples
    split: splits.Split


def device_type_of(config: TrainConfig) -> str:
    """``cuda`` when the config asks for (or allows) a GPU and there is one, else ``cpu``."""
    return "cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def load_samples(config: TrainConfig, context: distributed.DistributedContext) -> folders.Samples:
    """The images of ``--data`` (the default procedural set when none, generated on first use)."""
    if config.data is None:
        root = ensure_default_data(config.synthetic_scale, context)
    else:
        root = Path(config.data)
        if not root.exists():
            raise ConfigError(f"--data {root}: not found; pass an ImageFolder, fold<k>/ folders or a .csv manifest")
        # What training writes (the architecture's folder and folds.csv) never touches the data.
        refuse_overlap(Path(config.out) / config.member, f"--out {config.out}: its run folder", {"--data": root})
        refuse_overlap(Path(config.out) / "folds.csv", f"--out {config.out}: its", {"--data": root})
    return folders.discover(
        root,
        on_error="skip" if config.skip_bad else "raise",
        group_column=config.group_column,
        group_pattern=config.group_pattern,
        allow_outside_root=config.allow_outside_root,
        duplicates=config.duplicates,
        # Ranks of a torchrun job read the set side by side already: one process each.
        processes=1 if context.enabled else None,
    )


def check_shared_holdout(config: TrainConfig) -> None:
    """Every run under one ``--out`` calibrates on the same cells: a ``--cal-holdout`` other than
    the one its other runs recorded is refused (it would silently give the folds' average, and
    config.json, another holdout than the one the other members calibrated on)."""
    for recorded in sorted(Path(config.out).glob("*/*/config.json")):
        if recorded.parent == config.run_dir():
            continue
        try:
            other = json.loads(recorded.read_text()).get("cal_holdout", 0.0)
        except (OSError, ValueError):
            continue  # an unreadable config.json is that run's problem, reported where it is read
        if other != config.cal_holdout:
            raise ConfigError(
                f"--cal-holdout {config.cal_holdout}: {recorded} used --cal-holdout {other}; every run under one --out "
                f"shares its calibration holdout: give --cal-holdout {other}, or another --out"
            )


def make_split(config: TrainConfig, samples: folders.Samples, context: distributed.DistributedContext) -> splits.Split:
    """The holdout split, or fold ``config.fold`` of folds.csv (written by rank 0 on first use)."""
    if config.split == "holdout":
        return splits.holdout_split(
            samples.labels,
            config.val_fraction,
            config.test_fraction,
            config.seed,
            samples.groups,
            config.cal_fraction,
            samples.copies,
        )
    folds_csv = Path(config.out) / "folds.csv"
    check_shared_holdout(config)
    if context.is_main:
        folds = splits.load_or_create_folds(samples, folds_csv, config.num_folds, config.seed)
    distributed.barrier(context)
    if not context.is_main:
        folds = splits.load_or_create_folds(samples, folds_csv, config.num_folds, config.seed)
    available = sorted(set(folds.tolist()))
    if available != list(range(1, config.num_folds + 1)):
        source = f"{config.data} (its fold column or fold<k>/ folders)" if samples.folds is not None else folds_csv
        raise ConfigError(
            f"--num-folds {config.num_folds}: {source} has folds {available}; give --num-folds {len(available)} if they are 1..{len(available)}, or fix the folds"
        )
    return splits.fold_split(
        folds,
        samples.labels,
        config.fold,
        config.val_fraction,
        config.seed,
        samples.groups,
        config.cal_fraction,
        config.cal_holdout,
        samples.copies,
    )


def setup_fold(
    config: TrainConfig,
    samples: folders.Samples | None = None,
    context: distributed.DistributedContext | None = None,
) -> FoldSetup:
    """Join the process group (under torchrun; ``context`` given: that one instead, e.g. one
    fold of a fold-parallel run), pick the device, seed every generator, find the data
    (``samples``: already discovered, e.g. by an earlier fold) and split it."""
    validate_config(config)
    context = context or distributed.init_from_environment(device_type_of(config))
    device = resolve_device(config.device, context)
    seed_everything(config.seed)  # before the model is made: its initial weights come from it
    samples = samples if samples is not None else load_samples(config, context)
    return FoldSetup(context, device, samples, make_split(config, samples, context))


# --------------------------------------------------------------------------- network, pipeline, loaders


def input_normalization(
    config: TrainConfig, report: LoadReport | None
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where from): ``--mean/--std`` if given, else what the starting weights expect,
    else (random initialisation) ImageNet's."""
    if config.mean is not None or config.std is not None:
        if config.mean is None or config.std is None:
            raise ConfigError("--mean and --std go together; give both (three values each)")
        return tuple(config.mean), tuple(config.std), "--mean/--std"
    if report is not None:
        return tuple(report.mean), tuple(report.std), f"the starting weights ({report.format})"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet (random initialisation)"


@dataclass
class FoldParts:
    """The network with its starting weights, the pipeline it was built for (best.pt's record),
    the loaders of every part of the split (``cal`` only with a calibration split), the loss,
    and the split's digest. Made by :func:`build_fold`."""

    config: TrainConfig  # with the padding resolved: a property of the network that best.pt records
    model: nn.Module
    pipeline: PipelineSpec
    loaders: dict[str, torch.utils.data.DataLoader]
    loss_weight: torch.Tensor | None
    criterion: nn.Module
    split_digest: str


def build_network(config: TrainConfig, num_classes: int, device: torch.device) -> tuple[nn.Module, PipelineSpec]:
    """The network with its starting weights (``--pretrained`` may download them), on ``device``,
    and the eval pipeline its inputs go through (normalised as its starting weights expect)."""
    model = create_model(
        config.arch, num_classes, dropout=config.dropout, drop_path=config.drop_path, padding=config.padding
    )
    report = load_initial_weights(model, config.arch, pretrained=config.pretrained, weights=config.weights)
    if config.bn_momentum is not None:  # Keras's running-statistics update (method B)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    mean, std, source = input_normalization(config, report)
    log.info("input normalisation: mean %s std %s, from %s", mean, std, source)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    pipeline = PipelineSpec(
        config.img_size, tuple(config.pad_color), config.preprocess, config.otsu_foreground, tuple(mean), tuple(std)
    )
    return model, pipeline


def build_loaders(
    config: TrainConfig, setup: FoldSetup, pipeline: PipelineSpec
) -> dict[str, torch.utils.data.DataLoader]:
    """A loader per part of the split: ``train`` augmented and shuffled, the others in order."""
    parts = {"train": setup.split.train, "val": setup.split.val, "test": setup.split.test, "cal": setup.split.cal}
    if len(parts["val"]) == 0:
        raise ConfigError("validation set is empty: use a larger --val-fraction or more images per class")
    loaders = {}
    for name, indices in parts.items():
        if name == "cal" and len(indices) == 0:
            continue
        train = name == "train"
        transform = (
            from_spec(pipeline, train=True, preset=config.augment, rotation=config.rotation)
            if train
            else from_spec(pipeline)
        )
        dataset = ImageDataset(setup.samples, indices, transform, config.seed)
        sampler = None
        if setup.context.enabled:
            sampler = torch.utils.data.distributed.DistributedSampler(
                dataset, setup.context.world_size, setup.context.rank, shuffle=train, seed=config.seed
            )
        loaders[name] = make_loader(
            dataset,
            config.batch_size,
            train=train,
            seed=config.seed,
            num_workers=config.workers,
            device=setup.device,
            sampler=sampler,
        )
    return loaders


def build_fold(config: TrainConfig, setup: FoldSetup) -> FoldParts:
    """Everything :class:`~spermfuse.training.trainer.FoldTrainer` trains with, for ``config`` on ``setup``."""
    validate_config(config)
    config = replace(config, padding=resolve_padding(config.arch, config.pretrained, config.padding))
    if config.freeze_epochs > 0 and not config.pretrained and config.weights is None:
        log.warning(
            "the head-only stage assumes pretrained weights (--pretrained or --weights PATH); "
            "with random weights the frozen backbone and its BatchNorm statistics carry no information"
        )
    model, pipeline = build_network(config, len(setup.samples.classes), setup.device)
    loaders = build_loaders(config, setup, pipeline)
    weight = None
    if config.class_weights == "balanced":
        weight = class_weights(setup.samples.labels[setup.split.train], len(setup.samples.classes))
        weight = weight.to(setup.device)
    criterion = (
        engine.CountNormalizedCrossEntropy(weight)
        if config.loss_normalization == "count"
        else nn.CrossEntropyLoss(weight=weight)
    )
    paths = [[setup.samples.paths[i] for i in part] for part in setup.split.parts().values()]
    return FoldParts(config, model, pipeline, loaders, weight, criterion, split_digest(setup.samples.classes, *paths))
