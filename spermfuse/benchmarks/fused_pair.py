"""The fused pair as one module: both backbones on the same input, logits mixed by Sec. 2.5.

The paper runs the two members one after the other, so the pair costs the sum of both
latencies (16.96 ms = 10.82 + 6.54 ms, Table 8). At batch 1 neither backbone fills the
device, so ``concurrent=True`` runs them at the same time: on CUDA each member is queued
on its own stream (a CUDA graph captured from this forward then holds two parallel
branches, see ``cuda_graph.py``); on the CPU the second member runs in a helper thread
while the first runs in the caller's. The logits are the same either way. A member in
training mode makes them run in turn: dropout draws from the global generator, and
concurrent draws would make the result depend on thread timing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn


class FusedPair(nn.Module):
    """``alpha * first(x) + (1 - alpha) * second(x)``, optionally with both members concurrent."""

    def __init__(self, first: nn.Module, second: nn.Module, alpha: float = 0.5, concurrent: bool = False) -> None:
        super().__init__()
        self.first, self.second = first, second
        self.alpha, self.concurrent = alpha, concurrent
        self._helper: ThreadPoolExecutor | None = None
        self._streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.concurrent or self.first.training or self.second.training:
            first, second = self.first(x), self.second(x)
        elif x.is_cuda:
            first, second = self._on_two_streams(x)
        else:
            first, second = self._on_two_threads(x)
        return self.alpha * first + (1.0 - self.alpha) * second

    def _on_two_threads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``second`` in a helper thread, ``first`` in this one. ATen releases the GIL in its
        kernels, so the members really overlap. The helper thread lives as long as the
        module: a new thread per call would also start a new OpenMP team each time."""
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spermfuse-fused-pair")
        # Grad mode, inference mode and autocast are thread-local: the helper re-enters the caller's.
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        autocast, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

        def run_second() -> torch.Tensor:
            with (
                torch.inference_mode(inference),
                torch.set_grad_enabled(grad),
                torch.autocast("cpu", dtype=dtype, enabled=autocast),
            ):
                return self.second(x)

        pending = self._helper.submit(run_second)
        try:
            output_first = self.first(x)
        finally:
            output_second = pending.result()  # waits, and re-raises the helper's error here
        return output_first, output_second

    def _on_two_streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue each member on its own side stream, forked from and joined back to the current one."""
        # The same two streams on every call: a graph capture then runs on the streams its
        # warm-up used (cuBLAS keeps a workspace per stream) and creates none while capturing.
        if self._streams is None or self._streams[0].device != x.device:
            self._streams = (torch.cuda.Stream(x.device), torch.cuda.Stream(x.device))
        main = torch.cuda.current_stream(x.device)
        outputs = []
        for member, stream in zip((self.first, self.second), self._streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outputs.append(member(x))
        for stream in self._streams:
            main.wait_stream(stream)
        if not torch.cuda.is_current_stream_capturing():
            # Tell the caching allocator who else uses these tensors, so their memory is not
            # handed out again while another stream may still read it. (In a graph capture the
            # input is static and the graph owns its memory pool.)
            for stream, output in zip(self._streams, outputs):
                x.record_stream(stream)
                output.record_stream(main)
        return outputs[0], outputs[1]

    def __getstate__(self) -> dict:
        # Neither a thread nor a CUDA stream can be copied or pickled; a copy makes its own.
        return {**super().__getstate__(), "_helper": None, "_streams": None}
