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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import data as data_lib
from . import distributed, engine, splits
from .cache import ensure_default_data
from .checkpoint import atomic_torch_save, safe_torch_load
from .config import OPERATIONAL_SETTINGS, TrainConfig, validate_config
from .ema import WeightEMA
from .errors import ConfigError
from .lock import LOCK_NAME, FolderLock
from .models import LoadReport, create_model, get_spec, load_initial_weights, resolve_padding
from .models.freezing import freeze_backbone, set_frozen_norms_to_eval, unfreeze_last
from .output_folder import discard, move_aside, refuse_overlap
from .profiling import peak_memory_mb
from .run_folder import checkpoint_metadata, save_logits, split_digest, write_config, write_history
from .runtime import environment, resolve_device, seed_everything
from .transforms import IMAGENET_MEAN, IMAGENET_STD, PipelineSpec, from_spec

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    epochs: int
    trainable: str | int  # "all", "head", or the number of last layers


def stages_of(config: TrainConfig) -> list[Stage]:
    if config.freeze_epochs > 0:
        return [Stage("frozen", config.freeze_epochs, "head"), Stage("finetune", config.finetune_epochs, config.unfreeze_last)]
    return [Stage("train", config.epochs, "all")]


# --------------------------------------------------------------------------- setup helpers


def input_normalization(config: TrainConfig, report: LoadReport | None) -> tuple[tuple[float, ...], tuple[float, ...], str]:
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
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items() if key not in OPERATIONAL_SETTINGS}


def changed_settings(recorded: dict, current: dict) -> list[str]:
    """``--flag old -> new`` for every recorded setting that ``current`` changes."""
    return [f"--{key.replace('_', '-')} {recorded[key]} -> {current.get(key)}" for key in recorded if recorded[key] != current.get(key)]


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
        root, on_error="skip" if config.skip_bad else "raise", group_column=config.group_column, group_pattern=config.group_pattern,
        allow_outside_root=config.allow_outside_root,
    )


def make_split(config: TrainConfig, samples: data_lib.Samples, context: distributed.DistributedContext) -> splits.Split:
    if config.split == "holdout":
        return splits.holdout_split(samples.labels, config.val_fraction, config.test_fraction, config.seed, samples.groups, config.cal_fraction)
    folds_csv = Path(config.out) / "folds.csv"
    if context.is_main:
        folds = splits.load_or_create_folds(samples, folds_csv, config.num_folds, config.seed)
    distributed.barrier(context)
    if not context.is_main:
        folds = splits.load_or_create_folds(samples, folds_csv, config.num_folds, config.seed)
    available = sorted(set(folds.tolist()))
    if available != list(range(1, config.num_folds + 1)):
        source = f"{config.data} (its fold column or fold<k>/ folders)" if samples.folds is not None else folds_csv
        raise ConfigError(f"--num-folds {config.num_folds}: {source} has folds {available}; give --num-folds {len(available)} if they are 1..{len(available)}, or fix the folds")
    return splits.fold_split(folds, samples.labels, config.fold, config.val_fraction, config.seed, samples.groups, config.cal_fraction)


# --------------------------------------------------------------------------- the run


class FoldTrainer:
    """State of one fold's training; :meth:`run` does it all and returns the run folder."""

    def __init__(
        self,
        config: TrainConfig,
        progress: engine.Progress | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        samples: data_lib.Samples | None = None,
    ) -> None:
        """``samples``: an already discovered data set (``--fold all`` checks the images once)."""
        validate_config(config)
        # The padding is a property of the network (best.pt rebuilds it): resolved once, recorded.
        self.config = config = replace(config, padding=resolve_padding(config.arch, config.pretrained, config.padding))
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.context = distributed.init_from_environment("cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        self.device = resolve_device(config.device, self.context)
        self.amp_dtype = engine.amp_dtype_for(self.device, config.amp)
        seed_everything(config.seed)
        self.samples = samples if samples is not None else load_samples(config, self.context)
        self.split = make_split(config, self.samples, self.context)
        paths = [[self.samples.paths[i] for i in part] for part in (self.split.train, self.split.val, self.split.test, self.split.cal)]
        self.split_digest = split_digest(self.samples.classes, *paths)
        self.run_dir = config.run_dir()
        self._build_model()
        self._build_data()
        self.history: list[dict] = []
        self.ema: WeightEMA | None = None  # made at the start of each stage with --ema

    # ---- construction

    def _build_data(self) -> None:
        c = self.config
        self.pipeline_spec = PipelineSpec(c.img_size, tuple(c.pad_color), c.preprocess, c.otsu_foreground, tuple(self.mean), tuple(self.std))
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
        self.criterion = nn.CrossEntropyLoss(weight=self.loss_weight)

    def _loader(self, dataset: data_lib.ImageDataset, train: bool) -> torch.utils.data.DataLoader:
        c = self.config
        sampler = None
        if self.context.enabled:
            sampler = torch.utils.data.distributed.DistributedSampler(
                dataset, num_replicas=self.context.world_size, rank=self.context.rank, shuffle=train, seed=c.seed
            )
        return data_lib.make_loader(dataset, c.batch_size, train=train, seed=c.seed, num_workers=c.workers, device=self.device, sampler=sampler)

    def _build_model(self) -> None:
        c = self.config
        self.spec = get_spec(c.arch)
        self.model = create_model(c.arch, len(self.samples.classes), dropout=c.dropout, drop_path=c.drop_path, padding=c.padding)
        report = load_initial_weights(self.model, c.arch, pretrained=c.pretrained, weights=c.weights)
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
        last = self.run_dir / "last.pt"
        if not last.exists():
            if self.config.resume:
                log.info("--resume: no %s yet, starting from scratch", last)
            return None
        if not (self.config.resume or self.config.overwrite):
            raise ConfigError(f"{self.run_dir}: a run is already there; add --resume to continue it or --overwrite to start again")
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

    def _save_last(self, stage_index: int, next_epoch: int, global_epoch: int, optimizer, scaler, scheduler, stopper, finished=False) -> dict:
        """Everything a resume needs, saved atomically (by rank 0) and returned.

        ``optimizer`` None marks the start of a stage: its optimiser, scaler and scheduler start afresh.
        """
        state = {
            "arch": self.config.arch, "classes": list(self.samples.classes), "settings": training_settings(self.config), "split": self.split_digest,
            "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "early_stopping": stopper.state_dict(), "stage": stage_index, "next_epoch": next_epoch,
            "global_epoch": global_epoch, "history": self.history, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [], "finished": finished,
        }  # fmt: skip
        if self.context.is_main:
            atomic_torch_save(self.run_dir / "last.pt", state)
        return state

    def _save_best(self, epoch: int, metric: float) -> None:
        if self.context.is_main:
            meta = checkpoint_metadata(self.config, self.samples.classes, self.pipeline_spec, self.split_digest)
            weights = self.ema.shadow if self.ema else self.model.state_dict()  # with --ema, the averaged weights are the model
            atomic_torch_save(self.run_dir / "best.pt", {"model": weights, "epoch": epoch, "val_metric": metric, **meta})

    def _load_best(self) -> dict:
        distributed.barrier(self.context)
        best = safe_torch_load(self.run_dir / "best.pt")
        self.model.load_state_dict(best["model"])
        return best

    # ---- loop

    def _evaluate(self, loader, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, labels, indices = engine.predict(self.model, loader, self.device, self.amp_dtype, self.config.channels_last, tta)
        return distributed.gather_predictions(logits, labels, indices, self.context)

    def _run_epoch(self, stage: Stage, model: nn.Module, optimizer, scaler, global_epoch: int) -> dict:
        self.train_loader.sampler.set_epoch(global_epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        result = engine.train_one_epoch(
            model, self.train_loader, self.criterion, optimizer, scaler, self.device, self.amp_dtype,
            self.config.grad_clip, self.progress if self.context.is_main else None,
            before_step=set_frozen_norms_to_eval if stage.trainable != "all" else None,
            channels_last=self.config.channels_last, after_step=(lambda: self.ema.update(self.model)) if self.ema else None,
        )  # fmt: skip
        loss_sum, correct, images, seconds = distributed.all_reduce_sum(
            [result.loss_sum, result.correct, result.images, result.seconds], self.context, self.device
        )
        with self.ema.applied(self.model) if self.ema else nullcontext():  # validate (and so select) the averaged weights
            logits, labels, _ = self._evaluate(self.val_loader)
        weight = self.loss_weight.cpu() if self.loss_weight is not None and self.config.val_loss == "weighted" else None
        val_loss, val_acc = engine.loss_and_accuracy(logits, labels, weight)
        return {
            "epoch": global_epoch, "stage": stage.name, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / images, "train_acc": correct / images, "val_loss": val_loss, "val_acc": val_acc,
            "seconds": round(result.seconds, 3), "images_per_second": round(images / max(seconds / self.context.world_size, 1e-9), 2),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1), "skipped_steps": result.skipped_steps,
        }  # fmt: skip

    def run(self) -> Path:
        """Train every stage (resuming if asked), then write the logits of the best weights.

        One process at a time per run folder (a lock file); ``--overwrite`` moves the old run
        aside and deletes it only once the new one has written its logits."""
        with FolderLock(self.run_dir, "training") if self.context.is_main else nullcontext():
            state = self._resume_state()
            aside = move_aside(self.run_dir, keep={LOCK_NAME}) if self.config.overwrite and self.context.is_main else None
            self._train(state)
            discard(aside)
        return self.run_dir

    def _train(self, state: dict | None) -> None:
        c = self.config
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            normalization = {"mean": list(self.mean), "std": list(self.std)}
            write_config(self.run_dir, c, self.samples.root, normalization, environment(self.device), self.samples.classes)
        stages = stages_of(c)
        self._warn_if_frozen_without_weights()
        stage_index, global_epoch, finished = 0, 0, False
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.history = list(state["history"])
            stage_index, global_epoch, finished = state["stage"], state["global_epoch"], state.get("finished", False)
            log.info("resuming %s at stage %d, epoch %d", self.run_dir, stage_index + 1, state["next_epoch"] + 1)
        while not finished:
            global_epoch, stopper = self._train_stage(stage_index, stages, state, global_epoch)
            finished = stage_index == len(stages) - 1
            if not finished:
                state = self._begin_stage(stage_index + 1, global_epoch, stopper)
                stage_index += 1
        self._write_outputs()

    def _begin_stage(self, stage_index: int, global_epoch: int, stopper: engine.EarlyStopping) -> dict:
        """The boundary between two stages (method B), as one atomic save of last.pt.

        The next stage starts from the best weights so far, and its early stopping from the
        run's best score: ``best.pt`` is the best validation epoch of the whole run, over both
        stages (the fine-tuning stage replaces it only by beating it). A kill after this save
        resumes the next stage from these weights, never from a ``best.pt`` that the next stage
        wrote before its first ``last.pt``.
        """
        self._load_best()
        self.ema = None  # the next stage averages from these weights on
        carried = engine.EarlyStopping(self.config.early_stopping, stopper.mode, best=stopper.best, best_epoch=stopper.best_epoch)
        return self._save_last(stage_index, 0, global_epoch, None, None, None, carried)

    def _stage_tools(self, stage: Stage, resumed: dict | None):
        """Optimiser, scaler, scheduler and early stopping of a stage, restored when resuming."""
        c = self.config
        mode = "max" if c.monitor == "val_acc" else "min"
        optimizer = engine.build_optimizer(c.optimizer, self.model.parameters(), c.lr, c.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        scheduler = None
        if c.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=c.plateau_factor, patience=c.plateau_patience)
        stopper = engine.EarlyStopping(c.early_stopping, mode)
        if resumed is not None:
            if resumed["optimizer"] is not None:  # None at the start of a stage: fresh tools
                optimizer.load_state_dict(resumed["optimizer"])
                scaler.load_state_dict(resumed["scaler"])
                if scheduler is not None and resumed["scheduler"] is not None:
                    scheduler.load_state_dict(resumed["scheduler"])
            stopper.load_state_dict(resumed["early_stopping"])
            torch.set_rng_state(resumed["torch_rng"])  # dropout draws continue where they stopped
            if resumed["cuda_rng"]:
                torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        return optimizer, scaler, scheduler, stopper

    def _train_stage(self, stage_index: int, stages: list[Stage], resumed: dict | None, global_epoch: int) -> tuple[int, engine.EarlyStopping]:
        """Epochs of one stage until its budget or early stopping; returns the global epoch count
        and the stage's early stopping (it knows the best score so far)."""
        c, stage = self.config, stages[stage_index]
        self._set_trainable(stage)
        self.ema = WeightEMA(self.model, c.ema) if c.ema else None
        if self.ema and resumed is not None and resumed.get("ema") is not None:
            self.ema.load_state_dict(resumed["ema"])
        model = self._wrapped_model()
        optimizer, scaler, scheduler, stopper = self._stage_tools(stage, resumed)
        first_epoch = resumed["next_epoch"] if resumed is not None else 0
        if stopper.should_stop:
            return global_epoch, stopper
        for epoch in range(first_epoch, stage.epochs):
            global_epoch += 1
            row = self._run_epoch(stage, model, optimizer, scaler, global_epoch)
            metric = row[c.monitor]
            if not np.isfinite(metric):
                raise engine.TrainingError(f"validation {c.monitor} is {metric} at epoch {global_epoch}; the last good state is in {self.run_dir / 'last.pt'}")
            if scheduler is not None:
                scheduler.step(metric)
            if stopper.step(metric, global_epoch):
                self._save_best(global_epoch, metric)
            self.history.append(row)
            if self.context.is_main:
                write_history(self.run_dir / "history.csv", self.history)
            self._save_last(stage_index, epoch + 1, global_epoch, optimizer, scaler, scheduler, stopper)
            log.info(
                "epoch %d [%s] train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2e | %.0f img/s | %.1f s%s",
                global_epoch, stage.name, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                row["lr"], row["images_per_second"], row["seconds"], " *" if stopper.best_epoch == global_epoch else "",
            )  # fmt: skip
            if self.on_epoch_end is not None:
                self.on_epoch_end(row)
            if stopper.should_stop:
                log.info("early stopping: no improvement of %s for %d epochs (best %.4f at epoch %d)", c.monitor, stopper.patience, stopper.best, stopper.best_epoch)
                break
        if stage_index == len(stages) - 1:
            self._save_last(stage_index, stage.epochs, global_epoch, optimizer, scaler, scheduler, stopper, finished=True)
        return global_epoch, stopper

    def _write_outputs(self) -> None:
        best = self._load_best()
        if self.context.is_main and best.get("tta") != self.config.tta:  # a finished run re-evaluated with another --tta
            atomic_torch_save(self.run_dir / "best.pt", {**best, "tta": self.config.tta})
        fold = self.config.fold if self.config.split == "kfold" else 1
        for name, loader in (("cal", self.cal_loader), ("val", self.val_loader), ("test", self.test_loader)):
            if loader is None:
                continue
            logits, labels, indices = self._evaluate(loader, self.config.tta)  # per-epoch validation runs without TTA
            if self.context.is_main:
                paths = [self.samples.paths[i] for i in indices.tolist()]
                save_logits(self.run_dir / f"{name}_logits.npz", logits.numpy(), labels.numpy(), paths, self.samples.classes, self.config.arch, fold, self.split_digest)
        if self.context.is_main:  # logits and labels of the test split, from the loop above
            accuracy = (logits.argmax(1) == labels).float().mean().item()
            log.info("%s: test accuracy %.4f on %d images (best weights)", self.run_dir, accuracy, len(labels))
        distributed.barrier(self.context)


def train_fold(config: TrainConfig, progress: engine.Progress | None = None, on_epoch_end: Callable[[dict], None] | None = None) -> Path:
    """Train one fold (or the holdout split) as configured; returns the run folder."""
    return FoldTrainer(config, progress, on_epoch_end).run()
