"""Folds in parallel under torchrun: each process trains its share of the folds on its own device.

``torchrun --nproc-per-node N train.py --fold all --fold-parallel`` starts N processes; fold k
goes to rank (k - 1) mod N, on ``cuda:LOCAL_RANK`` (or the CPU), as an ordinary single-process
run: no gradient is synchronised. The process group serves two things only: rank 0 prepares the
data and folds.csv before the others read them (a barrier), and at the end every rank learns
which folds failed, so that every process (and torchrun) exits non-zero naming them.

The paper's protocol is 2 backbones x 5 independent folds; at its batch size of 8, one fold
across GPUs (the DDP mode, plain ``torchrun train.py --fold K``) splits tiny batches and their
BatchNorm statistics, so several GPUs are better spent on several folds.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from .. import distributed
from ..core.errors import SpermfuseError
from ..distributed import DistributedContext

log = logging.getLogger(__name__)


class FoldFailure(SpermfuseError):
    """One or more folds of a fold-parallel run failed; the message names each and why."""


def fold_share(folds: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The folds rank ``rank`` trains: fold k on rank (k - 1) mod ``world_size``."""
    return [k for k in folds if (k - 1) % world_size == rank]


class FoldPrefix(logging.Filter):
    """Prefixes every log record with the fold (and rank) it belongs to."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank, self.fold = rank, None

    def filter(self, record: logging.LogRecord) -> bool:
        """Prefix each record with the fold and rank once the fold is known (never twice)."""
        if self.fold is not None and not getattr(record, "fold_prefixed", False):
            record.msg = f"[fold {self.fold} | rank {self.rank}] {record.msg}"
            record.fold_prefixed = True
        return True


def run_fold_parallel(
    folds: Sequence[int],
    prepare: Callable[[DistributedContext], None],
    train_fold: Callable[[int, DistributedContext], None],
    device_type: str,
) -> list[int]:
    """Train ``folds`` spread over the torchrun processes; returns this rank's folds.

    ``prepare(context)`` runs on rank 0 before any fold (data, folds.csv); ``train_fold(k,
    context)`` trains fold k with a single-process ``context`` that carries this process's
    ``LOCAL_RANK`` (its device). A fold's exception is logged and reported by every rank at the
    end as one :class:`FoldFailure`; the other folds still run."""
    group = distributed.init_from_environment(device_type)
    local = DistributedContext(0, 1, group.local_rank)
    mine = fold_share(folds, group.rank, group.world_size)
    log.info(
        "fold-parallel: rank %d of %d trains folds %s on %s with %d CPU threads",
        group.rank,
        group.world_size,
        mine or "none",
        f"cuda:{group.local_rank}" if device_type == "cuda" else "the CPU",
        torch.get_num_threads(),
    )
    failures: list[tuple[int, str]] = []
    if group.is_main:
        try:
            prepare(local)
        except Exception as error:  # every rank must still reach the barrier and hear of it
            failures.append((0, f"preparing the data and folds.csv: {error}"))
    distributed.barrier(group)
    prefix = FoldPrefix(group.rank)
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(prefix)
    try:
        for fold in mine if not _any_failed(failures, group) else []:
            prefix.fold = fold
            try:
                train_fold(fold, local)
            except Exception as error:
                log.error("failed: %s", error)
                failures.append((fold, str(error).splitlines()[0] if str(error) else type(error).__name__))
            prefix.fold = None
    finally:
        for handler in handlers:
            handler.removeFilter(prefix)
    everyone = _gather(failures, group)
    if everyone:
        shown = "; ".join(f"fold {k}: {why}" if k else why for k, why in sorted(everyone))
        raise FoldFailure(f"--fold-parallel: {len(everyone)} failed ({shown}); fix it and rerun those folds")
    return mine


def _gather(failures: list[tuple[int, str]], group: DistributedContext) -> list[tuple[int, str]]:
    if not group.enabled:
        return failures
    parts: list = [None] * group.world_size
    dist.all_gather_object(parts, failures)
    return [failure for part in parts for failure in part]


def _any_failed(failures: list[tuple[int, str]], group: DistributedContext) -> bool:
    """Whether the preparation failed on rank 0 (then no rank trains)."""
    return bool(_gather(failures, group))
