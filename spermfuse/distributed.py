"""torchrun helpers: process group, rank, and collecting results from every process.

Under ``torchrun --nproc_per_node=N train.py ...`` each process trains on its shard
(DistributedSampler), metrics are summed over processes, and only rank 0 writes files.
Without torchrun everything here is a no-op, so the same code runs single-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether this process is one of several (under torchrun)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the shared files (rank 0)."""
        return self.rank == 0


def init_from_environment(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment (nccl on CUDA, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        # Deterministic mode (runtime.seed_everything) switched on after the group exists holds
        # references to it (torch 2.14): destroy_process_group then leaves gloo's threads running
        # into the interpreter's exit, where one aborts the process now and then (SIGABRT after a
        # finished run). Switched on before, the group is freed and its threads joined at shutdown.
        torch.use_deterministic_algorithms(True, warn_only=True)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], context: DistributedContext, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (loss sums, correct counts, image counts)."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_predictions(
    logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, context: DistributedContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every process's predictions, each sample once, ordered by sample index.

    DistributedSampler pads the last shard by repeating samples; those repeats are dropped
    here by their sample index, so the logits file holds each sample exactly once.
    """
    if context.enabled:
        parts: list = [None] * context.world_size
        dist.all_gather_object(parts, (logits.cpu(), labels.cpu(), indices.cpu()))
        logits = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        indices = torch.cat([p[2] for p in parts])
    order = torch.argsort(indices, stable=True)
    logits, labels, indices = logits[order], labels[order], indices[order]
    keep = torch.ones(len(indices), dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    return logits[keep], labels[keep], indices[keep]


def barrier(context: DistributedContext) -> None:
    """Wait for every process of the job (nothing outside torchrun)."""
    if context.enabled:
        dist.barrier()


def wrap(model: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (one device per process), else itself."""
    if not context.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
