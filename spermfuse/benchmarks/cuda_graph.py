"""Batch-1 inference from one captured CUDA graph.

At batch 1 a backbone is a few hundred small kernels and the GPU mostly waits for Python
to launch the next one. A CUDA graph records the launches once and replays them all with
one call; for ``FusedPair(concurrent=True)`` the two members' streams become two parallel
branches of the same graph, so the pair costs about as much as its slower member.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core.errors import ConfigError


class CudaGraph:
    """Replays ``fn(static_input)`` for inputs of one fixed shape and dtype (CUDA only).

    ``fn`` runs a few times on a side stream first (lazy initialisation, cuDNN choices,
    the standardised-kernel cache) and is then captured under ``no_grad``. Autocast in
    ``fn`` must use ``cache_enabled=False``: cached casts would be freed after capture.
    The returned tensor is the graph's static output, overwritten by the next call:
    clone it to keep it.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, warmup: int = 3) -> None:
        if example.device.type != "cuda":
            raise ConfigError(
                f"CUDA graphs need a CUDA device, got {example.device} (use --device cuda, or leave out --cuda-graph)"
            )
        self.static_input = example.detach().clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                fn(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = fn(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            raise ValueError(
                f"this CUDA graph was captured for {tuple(self.static_input.shape)} {self.static_input.dtype}, "
                f"got {tuple(x.shape)} {x.dtype}; capture another graph for that shape"
            )
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output
