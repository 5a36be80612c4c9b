import copy
import threading

import pytest
import torch
from torch import nn

from spermfuse.benchmarks import profiling
from spermfuse.benchmarks.cuda_graph import CudaGraph
from spermfuse.benchmarks.flops import count_flops
from spermfuse.benchmarks.fused_pair import FusedPair
from spermfuse.core.errors import ConfigError
from spermfuse.core.models import create_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    first, second = create_model("efficientnet_tiny", 3).eval(), create_model("resnetv2_tiny", 3).eval()
    nn.init.normal_(second.fc.weight)  # a zero-initialised head would hide a wrong mixture
    return first, second


class StateProbe(nn.Module):
    """Records the thread it runs in and the thread-local modes it runs under."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.thread = threading.current_thread()
        self.seen = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"))
        return x.mean(dim=(2, 3))


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("member failed")


@pytest.mark.parametrize("concurrent", [False, True])
def test_fused_pair_is_the_weighted_sum_of_both_models(concurrent):
    first, second = tiny_pair()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(FusedPair(first, second, 0.3, concurrent)(x), 0.3 * first(x) + 0.7 * second(x), atol=1e-6)


def test_concurrent_members_give_the_same_logits_bit_for_bit():
    first, second = tiny_pair()
    x = torch.randn(1, 3, 48, 48)
    with torch.inference_mode():
        assert torch.equal(FusedPair(first, second)(x), FusedPair(first, second, concurrent=True)(x))


def test_the_helper_thread_runs_under_the_callers_modes():
    first, second = StateProbe().eval(), StateProbe().eval()
    pair = FusedPair(first, second, concurrent=True)
    x = torch.randn(1, 3, 4, 4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        pair(x)
    assert first.thread is threading.current_thread() and second.thread is not first.thread
    assert second.seen == first.seen == (False, True, True)
    with torch.enable_grad():
        pair(x)
    assert second.seen == first.seen == (True, False, False)


def test_in_training_mode_the_members_run_in_turn_so_dropout_stays_reproducible():
    x, target = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    grads = []
    for concurrent in (False, True):
        first, second = tiny_pair()
        pair = FusedPair(first.train(), second.train(), 0.4, concurrent)  # dropout is active
        nn.functional.cross_entropy(pair(x), target).backward()
        grads.append([p.grad for p in pair.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_an_error_in_the_helper_thread_reaches_the_caller():
    pair = FusedPair(StateProbe().eval(), Failing().eval(), concurrent=True)
    with pytest.raises(RuntimeError, match="member failed"):
        pair(torch.randn(1, 3, 4, 4))


def test_cuda_graph_refuses_a_cpu_tensor_with_the_fix():
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device.*--device cuda"):
        CudaGraph(nn.Identity(), torch.randn(1, 3, 8, 8))


@needs_cuda
def test_streams_and_cuda_graph_reproduce_the_eager_fused_logits():
    first, second = tiny_pair()
    pair = FusedPair(first, second, 0.3, concurrent=True).cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        expected = 0.3 * first(x) + 0.7 * second(x)
        assert torch.allclose(pair(x), expected, atol=1e-5)
    graph = CudaGraph(pair, torch.zeros_like(x))
    assert torch.allclose(graph(x), expected, atol=1e-5)
    other = torch.randn_like(x)
    with torch.no_grad():
        assert torch.allclose(graph(other).clone(), 0.3 * first(other) + 0.7 * second(other), atol=1e-5)
    with pytest.raises(ValueError, match="captured for"):
        graph(torch.randn(2, 3, 64, 64, device="cuda"))


@needs_cuda
def test_latency_harness_runs_half_channels_last_cuda_graph():
    settings = profiling.InferenceSettings(img_size=64, half=True, channels_last=True, cuda_graph=True)
    latency = profiling.inference_latency(
        FusedPair(*tiny_pair(), concurrent=True), torch.device("cuda"), settings, warmup=2, iters=5
    )
    assert latency.iterations == 5 and latency.median_ms > 0


def test_flop_count_of_a_concurrent_pair_is_the_sum_of_its_members():
    first, second = tiny_pair()
    pair = FusedPair(first, second, concurrent=True)
    x = torch.randn(1, 3, 32, 32)
    assert count_flops(pair, x) == count_flops(first, x) + count_flops(second, x)
    assert pair.concurrent  # restored after counting


def test_a_used_concurrent_pair_can_be_deep_copied():
    pair = FusedPair(*tiny_pair(), concurrent=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = pair(x)
        assert torch.equal(copy.deepcopy(pair)(x), expected)
