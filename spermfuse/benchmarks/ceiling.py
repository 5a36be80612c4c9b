"""The arithmetic floor of a runtime: a network's multiply-adds at the fastest matrix product this
CPU runs in the same runtime and number format.

A convolution runs at best as fast as a matrix product of its size, and everything else a network
or a report does (normalisation, activations, reading images, drawing a page) only adds time. So no
kernel, graph rewrite or scheduling makes the fused pair faster on this machine than its matrix
work at that rate: a target below the floor needs less work (a smaller model, fewer pixels) or more
cores, and a measured time's distance from the floor is what that runtime's kernels leave on the
table. The fastest product is the best of a few square sizes and a few runs each, so the floor errs
low (the safe side for a claim that a target cannot be met).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .flops import count_flops_by_op

# The aten ops that are matrix products; fvcore's convention counts one multiply-add of each as one FLOP.
MATRIX_OPS = ("convolution", "mm", "addmm", "bmm")
MATRIX_SIDES = (512, 1024, 2048)
# How each deployed runtime multiplies matrices: PyTorch in fp32 or bf16 (eager, the bf16 program),
# ONNX Runtime in fp32 or uint8 x int8 (the int8 model's QLinearConv: activations uint8, weights int8).
RUNTIMES = ("PyTorch fp32", "PyTorch bf16", "ONNX Runtime fp32", "ONNX Runtime int8")


def matrix_multiply_adds(models: Iterable[nn.Module], img_size: int) -> int:
    """Multiply-adds of one image's convolutions and matrix products through each of ``models``
    (the work a matrix unit does; normalisation and activations are left out)."""
    total = 0
    for model in models:
        counter = count_flops_by_op(model.eval(), torch.zeros(1, 3, img_size, img_size))
        total += sum(counter.by_op[name] for name in MATRIX_OPS)
    return total


def fastest_matrix_rate(runtime: str, sides: Iterable[int] = MATRIX_SIDES, runs: int = 5) -> float:
    """Multiply-adds per second of the fastest square matrix product ``runtime`` (one of
    :data:`RUNTIMES`) runs on this CPU: over ``sides``, the fastest of ``runs`` runs after an untimed one.
    The threads are the runtime's defaults, as the deployed models run."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    return max(
        side**3 / _fastest_seconds(matrix_product(runtime, *random_matrices(runtime, side)), runs) for side in sides
    )


def _fastest_seconds(call: Callable[[], object], runs: int) -> float:
    call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def random_matrices(runtime: str, side: int) -> tuple:
    """Two ``side`` x ``side`` matrices of random entries in ``runtime``'s number formats: torch
    tensors for PyTorch, numpy arrays for ONNX Runtime (uint8 and int8 for its int8)."""
    rng = np.random.default_rng(0)
    if runtime.endswith("int8"):
        return rng.integers(0, 256, (side, side), dtype=np.uint8), rng.integers(-128, 128, (side, side), dtype=np.int8)
    left, right = (rng.standard_normal((side, side), dtype=np.float32) for _ in "lr")
    if runtime.startswith("PyTorch"):
        dtype = torch.bfloat16 if runtime.endswith("bf16") else torch.float32
        return torch.from_numpy(left).to(dtype), torch.from_numpy(right).to(dtype)
    return left, right


def matrix_product(runtime: str, left, right) -> Callable[[], object]:
    """A call that multiplies ``left`` by ``right`` (from :func:`random_matrices`) in ``runtime``;
    ONNX Runtime holds ``right`` as a constant, as the models' convolutions hold their weights."""
    if runtime.startswith("PyTorch"):
        return lambda: torch.mm(left, right)
    import onnxruntime

    session = onnxruntime.InferenceSession(
        _product_graph(right).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return lambda: session.run(None, {"left": left})[0]


def _product_graph(right: np.ndarray):
    """An ONNX graph multiplying its input by the constant ``right`` (MatMulInteger for int8 weights:
    uint8 x int8, the integer product QLinearConv is built on)."""
    from onnx import TensorProto, helper, numpy_helper

    side, int8 = right.shape[0], right.dtype == np.int8
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["left", "right"], ["product"])
    graph = helper.make_graph(
        [node],
        "matrix_product",
        [helper.make_tensor_value_info("left", TensorProto.UINT8 if int8 else TensorProto.FLOAT, [side, side])],
        [helper.make_tensor_value_info("product", TensorProto.INT32 if int8 else TensorProto.FLOAT, [side, side])],
        [numpy_helper.from_array(right, "right")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
