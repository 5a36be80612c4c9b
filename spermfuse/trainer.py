"""Train one fold end to end: data, model, stages, checkpoints, logits files.

Method A (default, Sec. 2.4 of the fusion paper): class-weighted cross-entropy, AdamW
lr 1e-4 wd 1e-4, ReduceLROnPlateau on validation accuracy (factor 0.5, patience 3),
early stopping after 10 epochs without improvement, batch 8, 240 px, seed 42.
Method B (preset ``paper_b`` in ``config.py``): Otsu preprocessing, EfficientNet-B4 at 224 px, a
head-only stage then the last 60 layers, early stopping on validation loss
(patience 7), constant learning rate, a 70/15/15 split.

Outputs in ``<out>/<arch>/fold<k>/`` (``holdout/`` for the holdout split):
``config.json``, ``history.csv``, ``best.pt``, ``last.pt``, ``val_logits.npz``,
``test_logits.npz``. ``last.pt`` holds everything needed to resume to the same result.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import data as data_lib
from . import distributed, engine, splits
from .cache import ensure_default_data
from .files import atomic_torch_save, safe_torch_load
from .config import OPERATIONAL_SETTINGS, TrainConfig, validate_config
from .ema import WeightEMA
from .errors import ConfigError
from .lock import LOCK_NAME, FolderLock
from .models import LoadReport, create_model, get_spec, load_initial_weights, resolve_padding
from .models.freezing import freeze_backbone, set_frozen_norms_to_eval, unfreeze_last
from .output_folder import discard, move_aside, refuse_overlap
from .profiling import peak_memory_mb
from .preemption import Preempted, StopRequest
from .run_folder import LAST_CHECKPOINT, checkpoint_metadata, save_logits, split_digest, write_config, write_history
from .runtime import environment, resolve_device, seed_everything
from .transforms import IMAGENET_MEAN, IMAGENET_STD, PipelineSpec, from_spec

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    epochs: int
    trainable: str | int  # "all", "head", or the number of last layers


@dataclass
class TrainState:
    """Where a run stands: its stage, the next epoch within it, the epochs so far, the history,
    and whether it is finished; saved in last.pt with the weights and the stage's tools."""

    stage: int = 0
    next_epoch: int = 0
    global_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    finished: bool = False

    def state_dict(self) -> dict:
        return {
            "stage": self.stage,
            "next_epoch": self.next_epoch,
            "global_epoch": self.global_epoch,
            "history": list(self.history),
            "finished": self.finished,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "TrainState":
        return cls(
            checkpoint["stage"],
            checkpoint["next_epoch"],
            checkpoint["global_epoch"],
            list(checkpoint["history"]),
            checkpoint.get("finished", False),
        )


@dataclass
class StageTools:
    """The optimiser, gradient scaler, plateau scheduler and early stopping of one stage.

    At a stage boundary only the early stopping is carried (it knows the run's best score); the
    optimiser, scaler and scheduler are None there and the next stage makes fresh ones."""

    optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler | None
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    stopper: engine.EarlyStopping

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": self.stopper.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["optimizer"] is not None:  # None at the start of a stage: fresh tools
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["early_stopping"])


def stages_of(config: TrainConfig) -> list[Stage]:
    if config.freeze_epochs > 0:
        return [
            Stage("frozen", config.freeze_epochs, "head"),
            Stage("finetune", config.finetune_epochs, config.unfreeze_last),
        ]
    return [Stage("train", config.epochs, "all")]


# --------------------------------------------------------------------------- setup helpers


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


def training_settings(config: TrainConfig) -> dict:
    """The settings a run's result depends on, JSON-like (lists, not tuples), as recorded in last.pt."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(config).items()
        if key not in OPERATIONAL_SETTINGS
    }


def changed_settings(recorded: dict, current: dict) -> list[str]:
    """``--flag old -> new`` for every recorded setting that ``current`` changes."""
    return [
        f"--{key.replace('_', '-')} {recorded[key]} -> {current.get(key)}"
        for key in recorded
        if recorded[key] != current.get(key)
    ]


def load_samples(config: TrainConfig, context: distributed.DistributedContext) -> data_lib.Samples:
    if config.data is None:
        root = ensure_default_data(config.synthetic_scale, context)
    else:
        root = Path(config.data)
        if not root.exists():
            raise ConfigError(f"--data {root}: not found; pass an ImageFolder, fold<k>/ folders or a .csv manifest")
        # What training writes (the architecture's folder and folds.csv) never touches the data.
        refuse_overlap(Path(config.out) / config.arch, f"--out {config.out}: its run folder", {"--data": root})
        refuse_overlap(Path(config.out) / "folds.csv", f"--out {config.out}: its", {"--data": root})
    return data_lib.discover(
        root,
        on_error="skip" if config.skip_bad else "raise",
        group_column=config.group_column,
        group_pattern=config.group_pattern,
        allow_outside_root=config.allow_outside_root,
    )


def make_split(config: TrainConfig, samples: data_lib.Samples, context: distributed.DistributedContext) -> splits.Split:
    if config.split == "holdout":
        return splits.holdout_split(
            samples.labels, config.val_fraction, config.test_fraction, config.seed, samples.groups, config.cal_fraction
        )
    folds_csv = Path(config.out) / "folds.csv"
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
        folds, samples.labels, config.fold, config.val_fraction, config.seed, samples.groups, config.cal_fraction
    )


# --------------------------------------------------------------------------- the run


@dataclass
class FoldSetup:
    """What training a fold needs that takes side effects to make: the process group and the
    device, the seeded random generators, the data (generated on first use) and its split
    (folds.csv written once). Made by :func:`setup_fold`; :class:`FoldTrainer` only reads it."""

    context: distributed.DistributedContext
    device: torch.device
    samples: data_lib.Samples
    split: splits.Split


def device_type_of(config: TrainConfig) -> str:
    """``cuda`` when the config asks for (or allows) a GPU and there is one, else ``cpu``."""
    return "cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def setup_fold(
    config: TrainConfig,
    samples: data_lib.Samples | None = None,
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


class FoldTrainer:
    """State of one fold's training; :meth:`run` does it all and returns the run folder."""

    def __init__(
        self,
        config: TrainConfig,
        setup: FoldSetup,
        progress: engine.Progress | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        """``setup``: what :func:`setup_fold` made for this config (the trainer only reads it);
        ``stop``: the installed signal handler whose request ends an epoch after its current step
        (single-process runs; under DDP a signal stops at once and the epoch is redone)."""
        validate_config(config)
        # The padding is a property of the network (best.pt rebuilds it): resolved once, recorded.
        self.config = config = replace(config, padding=resolve_padding(config.arch, config.pretrained, config.padding))
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.stop = stop if stop is not None and not setup.context.enabled else None
        self.partial: engine.EpochResult | None = None  # an epoch stopped mid-way, to continue
        self.context, self.device, self.samples, self.split = setup.context, setup.device, setup.samples, setup.split
        self.amp_dtype = engine.amp_dtype_for(self.device, config.amp)
        paths = [
            [self.samples.paths[i] for i in part]
            for part in (self.split.train, self.split.val, self.split.test, self.split.cal)
        ]
        self.split_digest = split_digest(self.samples.classes, *paths)
        self.run_dir = config.run_dir()
        self._build_model()
        self._build_data()
        self.state = TrainState()
        self.ema: WeightEMA | None = None  # made at the start of each stage with --ema

    # ---- construction

    def _build_data(self) -> None:
        c = self.config
        self.pipeline_spec = PipelineSpec(
            c.img_size, tuple(c.pad_color), c.preprocess, c.otsu_foreground, tuple(self.mean), tuple(self.std)
        )
        train_tf = from_spec(self.pipeline_spec, train=True, preset=c.augment, rotation=c.rotation)
        eval_tf = from_spec(self.pipeline_spec)
        self.train_set = data_lib.ImageDataset(self.samples, self.split.train, train_tf, c.seed)
        self.val_set = data_lib.ImageDataset(self.samples, self.split.val, eval_tf, c.seed)
        self.test_set = data_lib.ImageDataset(self.samples, self.split.test, eval_tf, c.seed)
        self.cal_set = data_lib.ImageDataset(self.samples, self.split.cal, eval_tf, c.seed)
        if len(self.val_set) == 0:
            raise ConfigError("validation set is empty: use a larger --val-fraction or more images per class")
        self.train_loader = self._loader(self.train_set, train=True)
        self.val_loader = self._loader(self.val_set, train=False)
        self.test_loader = self._loader(self.test_set, train=False)
        self.cal_loader = self._loader(self.cal_set, train=False) if len(self.cal_set) else None
        if c.class_weights == "balanced":
            weights = data_lib.class_weights(self.samples.labels[self.split.train], len(self.samples.classes))
        else:
            weights = None
        self.loss_weight = weights.to(self.device) if weights is not None else None
        self.criterion = (
            engine.CountNormalizedCrossEntropy(self.loss_weight)
            if c.loss_normalization == "count"
            else nn.CrossEntropyLoss(weight=self.loss_weight)
        )

    def _loader(self, dataset: data_lib.ImageDataset, train: bool) -> torch.utils.data.DataLoader:
        c = self.config
        sampler = None
        if self.context.enabled:
            sampler = torch.utils.data.distributed.DistributedSampler(
                dataset, num_replicas=self.context.world_size, rank=self.context.rank, shuffle=train, seed=c.seed
            )
        return data_lib.make_loader(
            dataset, c.batch_size, train=train, seed=c.seed, num_workers=c.workers, device=self.device, sampler=sampler
        )

    def _build_model(self) -> None:
        c = self.config
        self.spec = get_spec(c.arch)
        self.model = create_model(
            c.arch, len(self.samples.classes), dropout=c.dropout, drop_path=c.drop_path, padding=c.padding
        )
        report = load_initial_weights(self.model, c.arch, pretrained=c.pretrained, weights=c.weights)
        if c.bn_momentum is not None:  # Keras's running-statistics update (method B)
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = c.bn_momentum
        self.mean, self.std, source = input_normalization(c, report)
        log.info("input normalisation: mean %s std %s, from %s", self.mean, self.std, source)
        self.model.to(self.device)
        if c.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _warn_if_frozen_without_weights(self) -> None:
        c = self.config
        if c.freeze_epochs > 0 and not c.pretrained and c.weights is None:
            log.warning(
                "the head-only stage assumes pretrained weights (--pretrained or --weights PATH); "
                "with random weights the frozen backbone and its BatchNorm statistics carry no information"
            )

    def _set_trainable(self, stage: Stage) -> None:
        if stage.trainable == "all":
            for parameter in self.model.parameters():
                parameter.requires_grad = True
        else:
            freeze_backbone(self.model, self.spec.head)
            if stage.trainable != "head":
                unfreeze_last(self.model, int(stage.trainable))
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("stage %s: %d epochs max, %.2f M trainable parameters", stage.name, stage.epochs, trainable / 1e6)

    def _wrapped_model(self) -> nn.Module:
        if not self.context.enabled:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # ---- checkpoints

    def _resume_state(self) -> dict | None:
        last = self.run_dir / LAST_CHECKPOINT
        if not last.exists():
            if self.config.resume:
                log.info("--resume: no %s yet, starting from scratch", last)
            return None
        if not (self.config.resume or self.config.overwrite):
            raise ConfigError(
                f"{self.run_dir}: a run is already there; add --resume to continue it or --overwrite to start again"
            )
        if self.config.overwrite:
            return None
        state = safe_torch_load(last)
        if state.get("arch") != self.config.arch or state.get("classes") != list(self.samples.classes):
            raise ConfigError(
                f"{last}: was trained as {state.get('arch')} on classes {state.get('classes')}; "
                f"not resumable as {self.config.arch} on this data (use another --out or --overwrite)"
            )
        if state.get("split", self.split_digest) != self.split_digest:
            raise ConfigError(
                f"{last}: was trained on another train/validation/test split than this data and folds.csv give now "
                "(images added, removed or re-split); resuming would test on images it trained on. Start it again with --overwrite"
            )
        changed = changed_settings(state.get("settings", {}), training_settings(self.config))
        if changed:
            raise ConfigError(
                f"{last}: --resume with other settings than the run's ({'; '.join(changed)}); the restored optimiser, "
                "scheduler and early stopping would not match them. Resume with the run's flags, or start again with --overwrite"
            )
        return state

    def _save_last(self, tools: StageTools, partial: engine.EpochResult | None = None) -> dict:
        """Everything a resume needs (what the run is, the weights, :attr:`state`, the stage's
        tools, the random state, and ``partial``: the totals of an epoch stopped mid-way), saved
        atomically (by rank 0) and returned."""
        checkpoint = {
            "arch": self.config.arch,
            "classes": list(self.samples.classes),
            "settings": training_settings(self.config),
            "split": self.split_digest,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            **tools.state_dict(),
            **self.state.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "partial_epoch": partial.state_dict() if partial is not None else None,
        }
        if self.context.is_main:
            atomic_torch_save(self.run_dir / LAST_CHECKPOINT, checkpoint)
        return checkpoint

    def _save_best(self, epoch: int, metric: float) -> None:
        if self.context.is_main:
            meta = checkpoint_metadata(self.config, self.samples.classes, self.pipeline_spec, self.split_digest)
            weights = (
                self.ema.shadow if self.ema else self.model.state_dict()
            )  # with --ema, the averaged weights are the model
            atomic_torch_save(
                self.run_dir / "best.pt", {"model": weights, "epoch": epoch, "val_metric": metric, **meta}
            )

    def _load_best(self) -> dict:
        distributed.barrier(self.context)
        best = safe_torch_load(self.run_dir / "best.pt")
        self.model.load_state_dict(best["model"])
        return best

    # ---- loop

    def _evaluate(self, loader, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, labels, indices = engine.predict(
            self.model, loader, self.device, self.amp_dtype, self.config.channels_last, tta
        )
        return distributed.gather_predictions(logits, labels, indices, self.context)

    def _run_epoch(self, stage: Stage, model: nn.Module, tools: StageTools, global_epoch: int) -> dict:
        """One epoch's training (continuing :attr:`partial` when resumed mid-epoch) and validation."""
        self.train_loader.sampler.set_epoch(global_epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.stop.deferred() if self.stop is not None else nullcontext():
            result = engine.train_one_epoch(
                model,
                self.train_loader,
                self.criterion,
                tools.optimizer,
                tools.scaler,
                self.device,
                self.amp_dtype,
                self.config.grad_clip,
                self.progress if self.context.is_main else None,
                before_step=set_frozen_norms_to_eval if stage.trainable != "all" else None,
                channels_last=self.config.channels_last,
                after_step=(lambda: self.ema.update(self.model)) if self.ema else None,
                resume_from=self.partial,
                stop_requested=(lambda: self.stop.requested) if self.stop is not None else None,
            )
        self.partial = None
        if result.stopped_at is not None:
            self._stop_mid_epoch(result, tools)
        loss_sum, correct, images, seconds = distributed.all_reduce_sum(
            [result.loss_sum, result.correct, result.images, result.seconds], self.context, self.device
        )
        with (
            self.ema.applied(self.model) if self.ema else nullcontext()
        ):  # validate (and so select) the averaged weights
            logits, labels, _ = self._evaluate(self.val_loader)
        weight = self.loss_weight.cpu() if self.loss_weight is not None and self.config.val_loss == "weighted" else None
        val_loss, val_acc = engine.loss_and_accuracy(logits, labels, weight)
        return {
            "epoch": global_epoch,
            "stage": stage.name,
            "lr": tools.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / images,
            "train_acc": correct / images,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": round(result.seconds, 3),
            "images_per_second": round(images / max(seconds / self.context.world_size, 1e-9), 2),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "skipped_steps": result.skipped_steps,
        }

    def _stop_mid_epoch(self, result: engine.EpochResult, tools: StageTools) -> None:
        """A stop request inside an epoch: last.pt with the position in the epoch, then stop."""
        self.state.global_epoch -= 1  # the epoch is not over: a resume enters it again
        self._save_last(tools, partial=result)
        log.info(
            "stopped after step %d of epoch %d; --resume continues from the next step",
            result.stopped_at,
            self.state.global_epoch + 1,
        )
        raise Preempted(self.stop.signal_number)

    def run(self) -> Path:
        """Train every stage (resuming if asked), then write the logits of the best weights.

        One process at a time per run folder (a lock file); ``--overwrite`` moves the old run
        aside and deletes it only once the new one has written its logits."""
        with FolderLock(self.run_dir, "training") if self.context.is_main else nullcontext():
            state = self._resume_state()
            aside = (
                move_aside(self.run_dir, keep={LOCK_NAME}) if self.config.overwrite and self.context.is_main else None
            )
            self._train(state)
            discard(aside)
        return self.run_dir

    def _train(self, resumed: dict | None) -> None:
        """Every stage from where the run stands (a fresh run, or ``resumed`` from last.pt), then the logits."""
        c = self.config
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            normalization = {"mean": list(self.mean), "std": list(self.std)}
            write_config(
                self.run_dir, c, self.samples.root, normalization, environment(self.device), self.samples.classes
            )
        stages = stages_of(c)
        self._warn_if_frozen_without_weights()
        if resumed is not None:
            self.model.load_state_dict(resumed["model"])
            self.state = TrainState.from_checkpoint(resumed)
            partial = resumed.get("partial_epoch")
            self.partial = engine.EpochResult(**partial) if partial else None
            log.info("resuming %s at stage %d, epoch %d", self.run_dir, self.state.stage + 1, self.state.next_epoch + 1)
        while not self.state.finished:
            tools = self._train_stage(stages[self.state.stage], resumed, last=self.state.stage == len(stages) - 1)
            if self.state.stage == len(stages) - 1:
                break
            resumed = self._begin_stage(tools.stopper)
        self._write_outputs()

    def _begin_stage(self, stopper: engine.EarlyStopping) -> dict:
        """The boundary between two stages (method B), as one atomic save of last.pt.

        The next stage starts from the best weights so far, and its early stopping from the
        run's best score: ``best.pt`` is the best validation epoch of the whole run, over both
        stages (the fine-tuning stage replaces it only by beating it). A kill after this save
        resumes the next stage from these weights, never from a ``best.pt`` that the next stage
        wrote before its first ``last.pt``.
        """
        self._load_best()
        self.ema = None  # the next stage averages from these weights on
        self.state.stage, self.state.next_epoch = self.state.stage + 1, 0
        carried = engine.EarlyStopping(
            self.config.early_stopping, stopper.mode, best=stopper.best, best_epoch=stopper.best_epoch
        )
        return self._save_last(StageTools(None, None, None, carried))

    def _stage_tools(self, resumed: dict | None) -> StageTools:
        """Optimiser, scaler, scheduler and early stopping of a stage, restored when resuming."""
        c = self.config
        mode = "max" if c.monitor == "val_acc" else "min"
        optimizer = engine.build_optimizer(c.optimizer, self.model.parameters(), c.lr, c.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        scheduler = None
        if c.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=c.plateau_factor, patience=c.plateau_patience
            )
        tools = StageTools(optimizer, scaler, scheduler, engine.EarlyStopping(c.early_stopping, mode))
        if resumed is not None:
            tools.load_state_dict(resumed)
            torch.set_rng_state(resumed["torch_rng"])  # dropout draws continue where they stopped
            if resumed["cuda_rng"]:
                torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        return tools

    def _train_stage(self, stage: Stage, resumed: dict | None, last: bool) -> StageTools:
        """Epochs of one stage until its budget or early stopping; returns the stage's tools (its
        early stopping knows the best score so far). The run's last stage ends finished."""
        self._set_trainable(stage)
        self.ema = WeightEMA(self.model, self.config.ema) if self.config.ema else None
        if self.ema and resumed is not None and resumed.get("ema") is not None:
            self.ema.load_state_dict(resumed["ema"])
        model = self._wrapped_model()
        tools = self._stage_tools(resumed)
        if tools.stopper.should_stop:
            return tools
        for epoch in range(self.state.next_epoch, stage.epochs):
            self.state.global_epoch += 1
            row = self._run_epoch(stage, model, tools, self.state.global_epoch)
            self.state.next_epoch = epoch + 1
            self._end_epoch(row, stage, tools)
            if tools.stopper.should_stop:
                log.info(
                    "early stopping: no improvement of %s for %d epochs (best %.4f at epoch %d)",
                    self.config.monitor,
                    tools.stopper.patience,
                    tools.stopper.best,
                    tools.stopper.best_epoch,
                )
                break
        if last:
            self.state.next_epoch, self.state.finished = stage.epochs, True
            self._save_last(tools)
        return tools

    def _end_epoch(self, row: dict, stage: Stage, tools: StageTools) -> None:
        """After an epoch: the schedule and early stopping step, best.pt, history.csv and last.pt."""
        metric, epoch = row[self.config.monitor], self.state.global_epoch
        if not np.isfinite(metric):
            raise engine.TrainingError(
                f"validation {self.config.monitor} is {metric} at epoch {epoch}; the last good state is in {self.run_dir / 'last.pt'}"
            )
        if tools.scheduler is not None:
            tools.scheduler.step(metric)
        if tools.stopper.step(metric, epoch):
            self._save_best(epoch, metric)
        self.state.history.append(row)
        if self.context.is_main:
            write_history(self.run_dir / "history.csv", self.state.history)
        self._save_last(tools)
        if self.stop is not None and self.stop.requested:  # asked for after the epoch's last step
            raise Preempted(self.stop.signal_number)
        log.info(
            "epoch %d [%s] train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2e | %.0f img/s | %.1f s%s",
            epoch,
            stage.name,
            row["train_loss"],
            row["train_acc"],
            row["val_loss"],
            row["val_acc"],
            row["lr"],
            row["images_per_second"],
            row["seconds"],
            " *" if tools.stopper.best_epoch == epoch else "",
        )
        if self.on_epoch_end is not None:
            self.on_epoch_end(row)

    def _write_outputs(self) -> None:
        best = self._load_best()
        if (
            self.context.is_main and best.get("tta") != self.config.tta
        ):  # a finished run re-evaluated with another --tta
            atomic_torch_save(self.run_dir / "best.pt", {**best, "tta": self.config.tta})
        fold = self.config.fold if self.config.split == "kfold" else 1
        for name, loader in (("cal", self.cal_loader), ("val", self.val_loader), ("test", self.test_loader)):
            if loader is None:
                continue
            logits, labels, indices = self._evaluate(loader, self.config.tta)  # per-epoch validation runs without TTA
            if self.context.is_main:
                paths = [self.samples.paths[i] for i in indices.tolist()]
                save_logits(
                    self.run_dir / f"{name}_logits.npz",
                    logits.numpy(),
                    labels.numpy(),
                    paths,
                    self.samples.classes,
                    self.config.arch,
                    fold,
                    self.split_digest,
                )
        if self.context.is_main:  # logits and labels of the test split, from the loop above
            accuracy = (logits.argmax(1) == labels).float().mean().item()
            log.info("%s: test accuracy %.4f on %d images (best weights)", self.run_dir, accuracy, len(labels))
        distributed.barrier(self.context)


def train_fold(
    config: TrainConfig, progress: engine.Progress | None = None, on_epoch_end: Callable[[dict], None] | None = None
) -> Path:
    """Train one fold (or the holdout split) as configured; returns the run folder."""
    return FoldTrainer(config, setup_fold(config), progress, on_epoch_end).run()
