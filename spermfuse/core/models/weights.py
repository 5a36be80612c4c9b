"""Loading checkpoints into registered models, safely and completely.

Accepted files (``.safetensors`` wherever a state dict is accepted, read by
``files.read_safetensors`` without executing anything):

- a state dict or a spermfuse checkpoint (``.pt``/``.pth``; DDP ``module.`` prefixes removed);
- for ResNetV2 models: Google's BiT ``.npz`` (BiT-M-R50x1.npz, the distilled R50x1) and
  timm ``resnetv2_50x1_bit`` state dicts;
- for EfficientNets: timm ``tf_efficientnetv2_s`` (and other timm EfficientNet) state dicts,
  matched to torchvision's layout module by module.

Note on timm ``tf_`` EfficientNets: they were trained with TensorFlow's asymmetric "same"
padding; build the model with ``padding="same"`` (``--padding same``; the catalogue's entries
do it by themselves) for the same features. With the default symmetric padding the weights
load exactly but every stride-2 convolution sees its window shifted by one pixel.

The classifier head is dropped and left freshly initialised when its class count
differs; every other unmatched key is an error, never a silent partial load.

Normalisation is a property of the weights: a load reports the mean/std the checkpoint was
trained with, and training uses them. BiT (.npz and timm ResNetV2) and timm's
tf_efficientnetv2 checkpoints expect mean = std = 0.5 ([-1, 1] inputs); torchvision's and
timm's EfficientNet-B checkpoints the ImageNet mean/std; a spermfuse checkpoint carries its
own; any other state dict is assumed ImageNet (say otherwise with ``--mean``/``--std``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints import read_safetensors, safe_torch_load
from ..errors import SpermfuseError
from ..files import CheckpointError, safe_np_load
from ..normalization import IMAGENET_MEAN, IMAGENET_STD, UNIT_RANGE_MEAN, UNIT_RANGE_STD
from .registry import ModelSpec, without_absent_auxiliary

log = logging.getLogger(__name__)


class WeightsError(SpermfuseError):
    """A checkpoint that does not fit the model; the message names the file and what is wrong."""


@dataclass
class LoadReport:
    """What a load did: keys left at their initial values and keys dropped from the file."""

    source: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the input normalisation the weights expect
    std: tuple[float, float, float] = IMAGENET_STD

    def __str__(self) -> str:
        parts = [f"loaded {self.source} ({self.format})"]
        if self.missing:
            parts.append(f"re-initialised: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"ignored from file: {', '.join(self.unexpected)}")
        return "; ".join(parts)


# --------------------------------------------------------------------------- BiT .npz


def _hwio_to_oihw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1) if array.ndim == 4 else array))


def bit_npz_to_state_dict(
    arrays: dict[str, np.ndarray], model: nn.Module, prefix: str = "resnet/"
) -> dict[str, torch.Tensor]:
    """Google's BiT checkpoint names (``resnet/block1/unit01/a/...``) -> this ResNetV2's keys."""

    def take(name: str) -> np.ndarray:
        if prefix + name not in arrays:
            raise WeightsError(f"BiT checkpoint lacks {prefix + name!r}; is it a BiT ResNetV2 .npz for this depth?")
        return arrays[prefix + name]

    state = {"stem.conv.weight": _hwio_to_oihw(take("root_block/standardized_conv2d/kernel"))}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            unit = f"block{i + 1}/unit{j + 1:02d}/"
            ours = f"stages.{i}.{j}."
            for letter, k in (("a", 1), ("b", 2), ("c", 3)):
                state[f"{ours}conv{k}.weight"] = _hwio_to_oihw(take(f"{unit}{letter}/standardized_conv2d/kernel"))
                state[f"{ours}norm{k}.weight"] = torch.from_numpy(take(f"{unit}{letter}/group_norm/gamma").reshape(-1))
                state[f"{ours}norm{k}.bias"] = torch.from_numpy(take(f"{unit}{letter}/group_norm/beta").reshape(-1))
            if block.shortcut is not None:
                state[f"{ours}shortcut.weight"] = _hwio_to_oihw(take(f"{unit}a/proj/standardized_conv2d/kernel"))
    state["norm.weight"] = torch.from_numpy(take("group_norm/gamma").reshape(-1))
    state["norm.bias"] = torch.from_numpy(take("group_norm/beta").reshape(-1))
    if prefix + "head/conv2d/kernel" in arrays:
        kernel = take("head/conv2d/kernel")  # [1, 1, in, classes]
        state["fc.weight"] = torch.from_numpy(kernel.reshape(kernel.shape[-2], kernel.shape[-1]).T.copy())
        state["fc.bias"] = torch.from_numpy(take("head/conv2d/bias").reshape(-1))
    return {k: v.float() for k, v in state.items()}


# --------------------------------------------------------------------------- timm names


def timm_resnetv2_to_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``resnetv2_*_bit`` keys -> this ResNetV2's keys (head conv 1x1 -> linear)."""
    converted = {}
    for key, value in state.items():
        new = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        new = new.replace(".downsample.conv.", ".shortcut.")
        if new.startswith("head.fc."):
            new = new.replace("head.fc.", "fc.")
            value = value.flatten(1) if value.ndim == 4 else value
        converted[new] = value
    return converted


def timm_efficientnet_to_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """timm EfficientNet keys -> torchvision's, matched in module order with equal shapes.

    Both implementations register stem, blocks (expand, depthwise, SE, project) and head in
    the same order, so the i-th tensor of one is the i-th of the other; a shape mismatch
    anywhere means a different architecture and is an error.
    """
    theirs = [(k, v) for k, v in state.items() if not k.startswith("classifier.")]
    ours = [(k, v) for k, v in model.state_dict().items() if not k.startswith("classifier.")]
    if len(theirs) != len(ours):
        raise WeightsError(f"{source}: {len(theirs)} tensors for {len(ours)} in the model; not the same EfficientNet")
    converted = {}
    for (their_key, value), (our_key, target) in zip(theirs, ours):
        if value.shape != target.shape:
            raise WeightsError(
                f"{source}: {their_key} {tuple(value.shape)} does not fit {our_key} {tuple(target.shape)}"
            )
        converted[our_key] = value
    if "classifier.weight" in state:
        converted["classifier.1.weight"] = state["classifier.weight"]
        converted["classifier.1.bias"] = state["classifier.bias"]
    return converted


# --------------------------------------------------------------------------- loading


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a spermfuse checkpoint
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source}: not a state dict (expected a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std)
IMAGENET: Normalization = (IMAGENET_MEAN, IMAGENET_STD)
UNIT_RANGE: Normalization = (UNIT_RANGE_MEAN, UNIT_RANGE_STD)


def _is_efficientnet_v2(model: nn.Module) -> bool:
    from torchvision.models.efficientnet import FusedMBConv

    return any(isinstance(m, FusedMBConv) for m in model.modules())


def convert(
    model: nn.Module, path: Path, spec: ModelSpec, arch: str | None = None
) -> tuple[dict[str, torch.Tensor], str, Normalization]:
    """Read ``path``: a state dict in this model's names, the format found, and its (mean, std).
    ``arch``: the model's name, to refuse a spermfuse checkpoint of another architecture by name."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if spec.family != "resnetv2":
            raise WeightsError(f"{source}: .npz (BiT) checkpoints fit only ResNetV2 models")
        return bit_npz_to_state_dict(safe_np_load(path), model), "BiT .npz", UNIT_RANGE
    loaded = read_safetensors(path) if suffix == ".safetensors" else safe_torch_load(path)
    state = _unwrap(loaded, source)
    if spec.family == "resnetv2" and any(k.startswith("stages.0.blocks.") for k in state):
        return timm_resnetv2_to_state_dict(state), "timm ResNetV2", UNIT_RANGE
    if spec.family == "efficientnet" and "conv_stem.weight" in state:
        # timm's tf_efficientnetv2_* were all trained on [-1, 1]; its EfficientNet-Bs on ImageNet's statistics.
        normalization = UNIT_RANGE if _is_efficientnet_v2(model) else IMAGENET
        return timm_efficientnet_to_state_dict(state, model, source), "timm EfficientNet", normalization
    if isinstance(loaded, dict) and isinstance(
        loaded.get("pipeline"), dict
    ):  # a spermfuse best.pt (transforms.PipelineSpec)
        if arch is not None and loaded.get("arch") not in (None, arch):
            raise WeightsError(
                f"{source}: a spermfuse checkpoint of {loaded['arch']}, not {arch}; give --arch {loaded['arch']}"
            )
        return state, "spermfuse checkpoint", (tuple(loaded["pipeline"]["mean"]), tuple(loaded["pipeline"]["std"]))
    if spec.family == "torchvision":
        return without_absent_auxiliary(state, model), "state dict", IMAGENET
    return state, "state dict", IMAGENET


def load_state(model: nn.Module, state: dict[str, torch.Tensor], head: str, source: str, fmt: str) -> LoadReport:
    """Load ``state`` fully; only the head may be missing or dropped (class-count change)."""
    report = LoadReport(source, fmt)
    expected = model.state_dict()
    for key in [k for k in state if k in expected and state[k].shape != expected[k].shape]:
        if not key.startswith(head + "."):
            raise WeightsError(
                f"{source}: {key} has shape {tuple(state[key].shape)} in the file but {tuple(expected[key].shape)} in the model ({fmt}); "
                "weights of another architecture or width"
            )
        del state[key]
        report.unexpected.append(key)
    missing, unexpected = model.load_state_dict(state, strict=False)
    report.missing = list(missing)
    report.unexpected += unexpected
    wrong = [k for k in report.missing + report.unexpected if not k.startswith(head + ".")]
    if wrong:
        shown = ", ".join(wrong[:4]) + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        raise WeightsError(f"{source}: does not fit this model ({fmt}); unmatched keys: {shown}")
    return report


def load_weights(model: nn.Module, path: str | Path, spec: ModelSpec, arch: str | None = None) -> LoadReport:
    """Load a local checkpoint file into ``model`` (see module docstring for formats; ``arch``:
    the model's name, named in the refusal of another architecture's spermfuse checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state, fmt, (mean, std) = convert(model, path, spec, arch)
    except CheckpointError as error:
        raise WeightsError(str(error)) from None
    with torch.no_grad():
        report = load_state(model, state, spec.head, str(path), fmt)
    report.mean, report.std = mean, std
    log.info("%s; expects mean %s std %s", report, mean, std)
    return report
