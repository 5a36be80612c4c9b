"""Train one fold: the epochs of every stage, best.pt and last.pt, then the logits files.

Method A (default, Sec. 2.4 of the fusion paper): class-weighted cross-entropy, AdamW lr 1e-4
wd 1e-4, ReduceLROnPlateau on validation accuracy (factor 0.5, patience 3), early stopping after
10 epochs without improvement, batch 8, 240 px, seed 42. Method B (preset ``paper_b``): Otsu
preprocessing, EfficientNet-B4 at 224 px, a head-only stage then the last 60 layers, early
stopping on validation loss (patience 7), constant learning rate, a 70/15/15 split.

Outputs in ``<out>/<arch>/fold<k>/`` (``holdout/`` for the holdout split): ``config.json``,
``history.csv``, ``best.pt``, ``last.pt`` (all a resume needs to reach the same result) and
``{test,val,cal}_logits.npz`` (``cal`` with a calibration split). Setup: ``fold_setup.py``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..core import engine
from ..core.checkpoints import atomic_torch_save, safe_torch_load
from ..core.ema import WeightEMA
from ..core.logits import save_logits
from ..core.models import get_spec
from ..core.models.freezing import set_frozen_norms_to_eval, set_trainable
from ..core.transforms import PipelineSpec
from ..preemption import Preempted, StopRequest
from ..runtime import environment
from ..store.lock import LOCK_NAME, FolderLock
from ..store.output_folder import discard, move_aside
from ..store.run_folder import BEST_CHECKPOINT, HISTORY_CSV, LAST_CHECKPOINT, write_config, write_history
from . import train_state
from .config import TrainConfig
from .fold_setup import FoldParts, FoldSetup, build_fold, setup_fold
from .train_state import Stage, StageTools, TrainState

log = logging.getLogger(__name__)


def checkpoint_metadata(config: TrainConfig, classes: list[str], spec: PipelineSpec, split: str) -> dict:
    """What best.pt records beside the weights, so that prediction rebuilds the network and its
    exact test-time preprocessing (``pipeline``: the spec's dict), and knows the test-time
    augmentation and the split it was evaluated with."""
    return {
        "arch": config.arch,
        "classes": list(classes),
        "dropout": config.dropout,
        "padding": config.padding,
        "pipeline": spec.to_dict(),
        "tta": config.tta,
        "split": split,
    }


class FoldTrainer:
    """State of one fold's training; :meth:`run` does it all and returns the run folder."""

    def __init__(
        self,
        setup: FoldSetup,
        parts: FoldParts,
        progress: engine.Progress | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        """``setup`` and ``parts``: what :func:`~spermfuse.training.fold_setup.setup_fold` and
        :func:`~spermfuse.training.fold_setup.build_fold` made (the trainer only reads them); ``stop``: the
        installed signal handler whose request ends an epoch after its current step
        (single-process runs; under DDP a signal stops at once and the epoch is redone)."""
        self.config, self.model, self.pipeline_spec = parts.config, parts.model, parts.pipeline
        self.loaders, self.loss_weight, self.criterion = parts.loaders, parts.loss_weight, parts.criterion
        self.split_digest = parts.split_digest
        self.context, self.device, self.samples = setup.context, setup.device, setup.samples
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.stop = stop if stop is not None and not setup.context.enabled else None
        self.partial: engine.EpochResult | None = None  # an epoch stopped mid-way, to continue
        self.amp_dtype = engine.amp_dtype_for(self.device, self.config.amp)
        self.run_dir = self.config.run_dir()
        self.state = TrainState()
        self.ema: WeightEMA | None = None  # made at the start of each stage with --ema

    # ---- checkpoints

    def _save_last(self, tools: StageTools, partial: engine.EpochResult | None = None) -> dict:
        """Everything a resume needs (what the run is, the weights, :attr:`state`, the stage's
        tools, the random state, and ``partial``: the totals of an epoch stopped mid-way), saved
        atomically (by rank 0) and returned."""
        checkpoint = {
            "arch": self.config.arch,
            "classes": list(self.samples.classes),
            "settings": train_state.training_settings(self.config),
            "split": self.split_digest,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            **tools.state_dict(),
            **self.state.state_dict(),
            **train_state.random_state(self.device),
            "partial_epoch": partial.state_dict() if partial is not None else None,
        }
        if self.context.is_main:
            atomic_torch_save(self.run_dir / LAST_CHECKPOINT, checkpoint)
        return checkpoint

    def _save_best(self, epoch: int, metric: float) -> None:
        if self.context.is_main:
            meta = checkpoint_metadata(self.config, self.samples.classes, self.pipeline_spec, self.split_digest)
            weights = self.ema.shadow if self.ema else self.model.state_dict()  # with --ema, the average is the model
            atomic_torch_save(
                self.run_dir / BEST_CHECKPOINT, {"model": weights, "epoch": epoch, "val_metric": metric, **meta}
            )

    def _load_best(self) -> dict:
        distributed.barrier(self.context)
        best = safe_torch_load(self.run_dir / BEST_CHECKPOINT)
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
        self.loaders["train"].sampler.set_epoch(global_epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.stop.deferred() if self.stop is not None else nullcontext():
            result = engine.train_one_epoch(
                model,
                self.loaders["train"],
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
        totals = distributed.all_reduce_sum(
            [result.loss_sum, result.correct, result.images, result.seconds], self.context, self.device
        )
        # With --ema, validate (and so select) the averaged weights.
        with self.ema.applied(self.model) if self.ema else nullcontext():
            logits, labels, _ = self._evaluate(self.loaders["val"])
        weight = self.loss_weight.cpu() if self.loss_weight is not None and self.config.val_loss == "weighted" else None
        val_loss, val_acc = engine.loss_and_accuracy(logits, labels, weight)
        return train_state.history_row(
            stage.name, global_epoch, tools, totals, result, (val_loss, val_acc), self.context, self.device
        )

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
            state = train_state.resumable_checkpoint(self.run_dir, self.config, self.samples.classes, self.split_digest)
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
            normalization = {"mean": list(self.pipeline_spec.mean), "std": list(self.pipeline_spec.std)}
            write_config(
                self.run_dir,
                asdict(c),
                self.samples.root,
                normalization,
                environment(self.device),
                self.samples.classes,
            )
        stages = train_state.stages_of(c)
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

    def _train_stage(self, stage: Stage, resumed: dict | None, last: bool) -> StageTools:
        """Epochs of one stage until its budget or early stopping; returns the stage's tools (its
        early stopping knows the best score so far). The run's last stage ends finished."""
        trainable = set_trainable(self.model, get_spec(self.config.arch).head, stage.trainable)
        log.info("stage %s: %d epochs max, %.2f M trainable parameters", stage.name, stage.epochs, trainable / 1e6)
        self.ema = WeightEMA(self.model, self.config.ema) if self.config.ema else None
        if self.ema and resumed is not None and resumed.get("ema") is not None:
            self.ema.load_state_dict(resumed["ema"])
        model = distributed.wrap(self.model, self.context, self.device)
        tools = train_state.stage_tools(self.config, self.model, self.device, self.amp_dtype, resumed, stage.lr)
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
            write_history(self.run_dir / HISTORY_CSV, self.state.history)
        self._save_last(tools)
        if self.stop is not None and self.stop.requested:  # asked for after the epoch's last step
            raise Preempted(self.stop.signal_number)
        log.info("%s", train_state.epoch_summary(row, best=tools.stopper.best_epoch == epoch))
        if self.on_epoch_end is not None:
            self.on_epoch_end(row)

    def _write_outputs(self) -> None:
        best = self._load_best()
        # A finished run re-evaluated with another --tta records it.
        if self.context.is_main and best.get("tta") != self.config.tta:
            atomic_torch_save(self.run_dir / BEST_CHECKPOINT, {**best, "tta": self.config.tta})
        fold = self.config.fold if self.config.split == "kfold" else 1
        for name in [split for split in ("cal", "val", "test") if split in self.loaders]:
            # With --tta (the epochs' validation runs without it).
            logits, labels, indices = self._evaluate(self.loaders[name], self.config.tta)
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
    setup = setup_fold(config)
    return FoldTrainer(setup, build_fold(config, setup), progress, on_epoch_end).run()
