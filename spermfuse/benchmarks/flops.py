"""FLOP counting with fvcore's conventions, without fvcore.

The ops a model really runs are observed with a ``TorchDispatchMode`` (so any model
works, whatever its Python code looks like), and counted as fvcore does:

- convolution, linear, matmul: one fused multiply-add = one FLOP;
- batch norm in eval: 1 per input element (2 with affine); in training mode: 4 (5 with affine);
- group norm and layer norm: 4 per element (5 with affine);
- adaptive average pooling: 1 per input element;
- element-wise ops (activations, additions, multiplications) and everything else: 0.

Weight standardisation (BiT) runs as the BiT reference computes it, a training-mode batch
norm over each convolution's weights, so it is counted at 4 FLOPs per weight element (the
counter switches off the inference cache that would otherwise skip it). This is how the
paper's 4.95 GFLOPs for ResNet50V2 at 240x240 comes out.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..core.models.resnetv2 import StdConv2d
from .fused_pair import FusedPair

aten = torch.ops.aten


def _numel(tensor) -> int:
    return tensor.numel() if isinstance(tensor, torch.Tensor) else 0


def _conv(args, out) -> int:
    weight = args[1]
    return out.numel() * weight.shape[1] * math.prod(weight.shape[2:])


def _mm(args, out) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args, out) -> int:
    a, b = args[1], args[2]
    return a.shape[0] * a.shape[1] * b.shape[1]


def _bmm(args, out) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _batch_norm(training_index: int | None, weight_index: int = 1) -> Callable:
    def count(args, out) -> int:
        training = bool(args[training_index]) if training_index is not None else False
        affine = len(args) > weight_index and args[weight_index] is not None
        per_element = (5 if affine else 4) if training else (2 if affine else 1)
        return per_element * _numel(args[0])

    return count


def _group_norm(args, out) -> int:
    affine = args[1] is not None
    return (5 if affine else 4) * _numel(args[0])


def _layer_norm(args, out) -> int:
    affine = len(args) > 2 and args[2] is not None
    return (5 if affine else 4) * _numel(args[0])


def _input_elements(args, out) -> int:
    return _numel(args[0])


RULES: dict = {
    aten.convolution.default: _conv,
    aten.mm.default: _mm,
    aten.addmm.default: _addmm,
    aten.bmm.default: _bmm,
    aten.native_batch_norm.default: _batch_norm(5),
    aten._native_batch_norm_legit.default: _batch_norm(5),
    aten._native_batch_norm_legit.no_stats: _batch_norm(3),
    aten._native_batch_norm_legit_no_training.default: _batch_norm(None),
    aten.native_group_norm.default: _group_norm,
    aten.native_layer_norm.default: _layer_norm,
    aten._adaptive_avg_pool2d.default: _input_elements,
    # adaptive_avg_pool2d to 1x1 reaches the dispatcher as a mean over H, W: count it the same.
    aten.mean.dim: _input_elements,
}


class FlopCounter(TorchDispatchMode):
    """Counts FLOPs of the aten ops run inside it, by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = RULES.get(func)
        if rule is not None:
            self.by_op[str(func.overloadpacket.__name__)] += int(rule(args, out))
        return out

    @property
    def total(self) -> int:
        """FLOPs counted over every operator."""
        return sum(self.by_op.values())


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``example_input`` (fvcore's convention)."""
    return count_flops_by_op(model, example_input).total


def count_flops_by_op(model: nn.Module, example_input: torch.Tensor) -> FlopCounter:
    """Like :func:`count_flops`, keeping the breakdown by op (``counter.by_op``)."""
    counter = FlopCounter()
    # The counter sees only ops that run, and only in this thread: weight standardisation
    # (a training-mode batch norm over the weights, 4 FLOPs per weight element) must not come
    # from the inference cache, and a concurrent fused pair must run both members here.
    switched = [(m, "use_inference_cache") for m in model.modules() if isinstance(m, StdConv2d)]
    switched += [(m, "concurrent") for m in model.modules() if isinstance(m, FusedPair)]
    saved = [getattr(module, name) for module, name in switched]
    for module, name in switched:
        setattr(module, name, False)
    try:
        with torch.no_grad(), counter:
            model(example_input)
    finally:
        for (module, name), value in zip(switched, saved):
            setattr(module, name, value)
    return counter
