"""Timing helpers: latency percentiles, training throughput and peak memory.

On CUDA every timed iteration is bracketed by CUDA events and synchronised; on the CPU
``time.perf_counter`` is used. Report medians: these machines are shared and noisy.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.engine import amp_dtype_for, autocast
from ..core.errors import ConfigError
from ..core.transforms import PAPER_IMG_SIZE
from ..runtime import peak_memory_mb
from .cuda_graph import CudaGraph


@dataclass
class Latency:
    """Summary of a call's timed runs, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    iterations: int

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")


def summarize_times(times_ms: Sequence[float]) -> Latency:
    """Median, 10th and 90th percentiles and mean of ``times_ms``."""
    values = np.asarray(times_ms, dtype=np.float64)
    return Latency(
        float(np.median(values)),
        float(np.percentile(values, 10)),
        float(np.percentile(values, 90)),
        float(values.mean()),
        len(values),
    )


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 100, iters: int = 200) -> Latency:
    """Run ``fn`` ``warmup`` times untimed, then time ``iters`` runs one by one."""
    return time_interleaved({"fn": fn}, device, warmup, iters)["fn"]


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int = 100,
    iters: int = 200,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Latency]:
    """Time several calls side by side: each timed round runs every one of them once, so
    drifting load on a shared machine affects all alike and their ratios stay fair.
    ``progress(round, rounds)`` after every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    for done in range(1, iters + 1):
        for name, fn in fns.items():
            times[name].append(_time_once(fn, device))
        if progress is not None:
            progress(done, iters)
    return {name: summarize_times(values) for name, values in times.items()}


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events around it on a GPU, the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_time = time.perf_counter()
    fn()
    return (time.perf_counter() - start_time) * 1000.0


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is run when timed: batch, input size, precision, memory layout, launches."""

    batch_size: int = 1
    img_size: int = PAPER_IMG_SIZE
    amp: str = "off"  # autocast: fp16 on CUDA, bf16 on the CPU
    half: bool = False  # weights and input stored in fp16 (CUDA only): no casts at run time
    channels_last: bool = False
    cuda_graph: bool = False  # replay one captured CUDA graph per call (CUDA only)

    def check(self, device: torch.device) -> None:
        """Raise ValueError naming the flag when a setting cannot run on ``device``."""
        if device.type != "cuda" and (self.half or self.cuda_graph):
            flag = "--half" if self.half else "--cuda-graph"
            raise ConfigError(f"{flag} needs a CUDA device (--device cuda); on the CPU use --amp on for bf16")


def inference_step(model: nn.Module, device: torch.device, settings: InferenceSettings) -> Callable[[], torch.Tensor]:
    """One batch of random input and a call that runs ``model`` on it as ``settings`` say."""
    settings.check(device)
    model = model.eval().to(device)
    x = torch.randn(settings.batch_size, 3, settings.img_size, settings.img_size, device=device)
    if settings.half:
        model, x = model.half(), x.half()
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = amp_dtype_for(device, settings.amp)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype, cache_enabled=not settings.cuda_graph):
            return model(inputs)

    if settings.cuda_graph:
        graph = CudaGraph(forward, x)
        return lambda: graph(x)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return forward(x)

    return step


def inference_latency(
    model: nn.Module,
    device: torch.device,
    settings: InferenceSettings = InferenceSettings(),
    warmup: int = 100,
    iters: int = 200,
) -> Latency:
    """Latency of ``model`` in eval mode without autograd, run as ``settings`` say."""
    return time_call(inference_step(model, device, settings), device, warmup, iters)


@dataclass
class TrainingCost:
    """What a few timed training steps measured."""

    images_per_second: float
    peak_memory_mb: float
    median_step_ms: float


def training_cost(
    model: nn.Module,
    device: torch.device,
    batch_size: int = 8,
    img_size: int = PAPER_IMG_SIZE,
    amp: str = "off",
    steps: int = 20,
    warmup: int = 3,
    num_classes: int = 18,
) -> TrainingCost:
    """Images/s and peak memory of full training steps (forward, loss, backward, AdamW step)."""
    model = model.train().to(device)
    dtype = amp_dtype_for(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        with autocast(device, dtype):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    latency = time_call(step, device, warmup, steps)
    return TrainingCost(batch_size * 1000.0 / latency.median_ms, peak_memory_mb(device), latency.median_ms)


def onnx_runtime_op_shares(profile: Path) -> dict[str, float]:
    """Each kind of node's share of the kernel time in an ONNX Runtime profile (the JSON file
    ``InferenceSession.end_profiling`` names), largest first."""
    kernel_time: Counter[str] = Counter()
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            kernel_time[event["args"]["op_name"]] += event["dur"]
    total = sum(kernel_time.values())
    return {op: time / total for op, time in kernel_time.most_common()} if total else {}
