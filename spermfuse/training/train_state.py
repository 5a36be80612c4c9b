"""Where a training run stands, and what last.pt must hold to resume it to the same result:
the stages (:func:`stages_of`), the run's position (:class:`TrainState`), a stage's optimiser,
scaler, scheduler and early stopping (:class:`StageTools`), and the check that a last.pt found
in a run folder belongs to this run (:func:`resumable_checkpoint`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import engine
from ..core.checkpoints import safe_torch_load
from ..core.errors import ConfigError
from ..distributed import DistributedContext
from ..runtime import peak_memory_mb
from ..store.run_folder import LAST_CHECKPOINT
from .config import OPERATIONAL_SETTINGS, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage of fine-tuning: how long, which layers learn and at what learning rate."""

    name: str
    epochs: int
    trainable: str | int  # "all", "head", or the number of last layers
    lr: float


def stages_of(config: TrainConfig) -> list[Stage]:
    """One stage (method A), or a head-only stage and a fine-tuning stage (method B, Sec. 2.3)."""
    if config.freeze_epochs > 0:
        return [
            Stage("frozen", config.freeze_epochs, "head", config.lr),
            Stage("finetune", config.finetune_epochs, config.unfreeze_last, config.finetune_lr or config.lr),
        ]
    return [Stage("train", config.epochs, "all", config.lr)]


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
        """The state saved in ``checkpoint`` (what :meth:`state_dict` wrote)."""
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


def stage_tools(
    config: TrainConfig,
    model: nn.Module,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    resumed: dict | None = None,
    lr: float | None = None,
) -> StageTools:
    """The tools of a stage: the optimiser over ``model``'s parameters, a GradScaler (active with
    float16 autocast only), the plateau schedule (``--scheduler plateau``) and early stopping on
    ``config.monitor``; fresh, or restored from the ``resumed`` last.pt with the random state.
    ``lr`` is the stage's learning rate (default ``config.lr``)."""
    mode = "max" if config.monitor == "val_acc" else "min"
    optimizer = engine.build_optimizer(config.optimizer, model.parameters(), lr or config.lr, config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    scheduler = None
    if config.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=config.plateau_factor, patience=config.plateau_patience
        )
    tools = StageTools(optimizer, scaler, scheduler, engine.EarlyStopping(config.early_stopping, mode))
    if resumed is not None:
        tools.load_state_dict(resumed)
        restore_random_state(resumed)  # dropout draws continue where they stopped
    return tools


def history_row(
    stage: str,
    epoch: int,
    tools: StageTools,
    totals: list[float],
    result: engine.EpochResult,
    validation: tuple[float, float],
    context: DistributedContext,
    device: torch.device,
) -> dict:
    """One epoch's row of history.csv: ``totals`` are the loss sum, correct count, images and
    seconds summed over the processes, ``result`` this process's epoch, ``validation`` the
    validation loss and accuracy."""
    loss_sum, correct, images, seconds = totals
    return {
        "epoch": epoch,
        "stage": stage,
        "lr": tools.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / images,
        "train_acc": correct / images,
        "val_loss": validation[0],
        "val_acc": validation[1],
        "seconds": round(result.seconds, 3),
        "images_per_second": round(images / max(seconds / context.world_size, 1e-9), 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "skipped_steps": result.skipped_steps,
    }


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


def resumable_checkpoint(run_dir: Path, config: TrainConfig, classes: list[str], split: str) -> dict | None:
    """``run_dir``'s last.pt when ``--resume`` continues it; None to start afresh (no last.pt, or
    ``--overwrite``). Refused: a run already there without either flag, or a last.pt of another
    architecture, class list, split (``split``: this run's digest) or result-changing setting."""
    last = run_dir / LAST_CHECKPOINT
    if not last.exists():
        if config.resume:
            log.info("--resume: no %s yet, starting from scratch", last)
        return None
    if not (config.resume or config.overwrite):
        raise ConfigError(
            f"{run_dir}: a run is already there; add --resume to continue it or --overwrite to start again"
        )
    if config.overwrite:
        return None
    state = safe_torch_load(last)
    if state.get("arch") != config.arch or state.get("classes") != list(classes):
        raise ConfigError(
            f"{last}: was trained as {state.get('arch')} on classes {state.get('classes')}; "
            f"not resumable as {config.arch} on this data (use another --out or --overwrite)"
        )
    if state.get("split", split) != split:
        raise ConfigError(
            f"{last}: was trained on another train/validation/test split than this data and folds.csv give now "
            "(images added, removed or re-split); resuming would test on images it trained on. Start it again with --overwrite"
        )
    changed = changed_settings(state.get("settings", {}), training_settings(config))
    if changed:
        raise ConfigError(
            f"{last}: --resume with other settings than the run's ({'; '.join(changed)}); the restored optimiser, "
            "scheduler and early stopping would not match them. Resume with the run's flags, or start again with --overwrite"
        )
    return state


def random_state(device: torch.device) -> dict:
    """The generators' states that last.pt carries (dropout's draws continue after a resume)."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def restore_random_state(checkpoint: dict) -> None:
    """Set the generators back to what :func:`random_state` recorded in ``checkpoint``."""
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"]:
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])


def epoch_summary(row: dict, best: bool) -> str:
    """One history row as the log's line (`` *`` marks a new best epoch)."""
    return (
        f"epoch {row['epoch']} [{row['stage']}] train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | lr {row['lr']:.2e} | "
        f"{row['images_per_second']:.0f} img/s | {row['seconds']:.1f} s{' *' if best else ''}"
    )
