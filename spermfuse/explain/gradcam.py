"""Where a model looked: Grad-CAM for one network and for a fused pair, occlusion as a cross-check.

Grad-CAM (Selvaraju et al., 2017): for class c and a convolutional layer with activations
A^k, the weights alpha_k = spatial mean of dy_c / dA^k and the map ReLU(sum_k alpha_k A^k),
upsampled bilinearly to the input and min-max scaled to [0, 1] per image.

For a fusion y_c = sum_i w_i z_i,c (Sec. 2.5 of the fusion paper; folds of a cross-validated
ensemble are more members with weights w_i / K) the gradient of the *fused* logit flows
into every member, so member i's alpha already carries its weight w_i. Member i's map is
ReLU(sum_k alpha_ik A_ik); the fused map is ReLU(sum_i sum_k alpha_ik A_ik) (each member's
sum upsampled to the input first): the Grad-CAM of the fused model whose last layer is the
members' layers side by side. Summing before the ReLU and the scaling keeps each member's
share of the evidence: a member with weight 0 adds nothing, and one member's negative
evidence can cancel the other's positive evidence at the same place, as it does in the
fused logit.

Everything here leaves a model as it found it: its modes, ``requires_grad`` flags and hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.fused_model import Classifier, FusedModel
from ..core.models.efficientnet import is_efficientnet
from ..core.models.resnetv2 import ResNetV2
from ..core.transforms import from_spec, letterbox_box
from ..data.images import load_rgb


def default_layer(model: nn.Module) -> nn.Module:
    """The last convolutional feature stage of a registered architecture.

    - EfficientNets (torchvision): ``features[-1]``, the final 1x1 convolution + BatchNorm +
      SiLU (1280 channels for V2-S, 1792 for B4), the map that is pooled into the classifier;
    - ResNetV2 (BiT): ``act``, the ReLU after the final GroupNorm, the map that is pooled.
      (Not ``stages[-1]``: the GroupNorm after it removes any per-group shift, so the Grad-CAM
      weights there sum to zero in every group and the map has no fixed scale.)

    For both, features -> global average pool -> linear, so the spatial sum of the unrectified
    map equals the explained logit minus its bias: the members' maps share one scale.
    """
    if is_efficientnet(model):
        return model.features[-1]
    if isinstance(model, ResNetV2):
        return model.act
    return last_spatial_map(model)


def last_spatial_map(model: nn.Module, size: int = 224) -> nn.Module:
    """Any other network (``tv:<name>``): the module that last gives a spatial feature map
    [N, C, H, W] (H, W > 1) before the head runs (the last linear layer, or the last
    convolution where there is none, as in SqueezeNet), in a forward pass of one ``size`` x ``size`` image: the map
    that is pooled into the head. Networks whose last map is followed by tokens (vision
    transformers) have none to explain: refused."""
    outputs: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(module: nn.Module, _, out) -> None:
        outputs.append((module, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))

    hooks = [module.register_forward_hook(record) for module in model.modules() if module is not model]
    parameter, training = next(model.parameters()), model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    linear = [i for i, (module, _) in enumerate(outputs) if isinstance(module, nn.Linear)]
    convolutions = [i for i, (module, _) in enumerate(outputs) if isinstance(module, nn.Conv2d)]
    head = linear[-1] if linear else convolutions[-1] if convolutions else len(outputs)
    spatial = [i for i, (_, shape) in enumerate(outputs[:head]) if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
    tokens_after = spatial and any(len(shape) == 3 for _, shape in outputs[spatial[-1] + 1 : head])
    if not spatial or tokens_after:
        raise ConfigError(
            f"no default Grad-CAM layer for {type(model).__name__} (no spatial map before its head); pass layer= (a module or its name)"
        )
    return outputs[spatial[-1]][0]


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    """``layer`` as a module of ``model``: None -> :func:`default_layer`, a name -> that submodule."""
    if layer is None:
        return default_layer(model)
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            raise ConfigError(
                f"layer {layer!r}: no such module in {type(model).__name__} (e.g. {', '.join(n for n, _ in list(model.named_children())[:4])})"
            ) from None
    return layer


@dataclass
class Member:
    """One network of a fusion: its weight in the fused logit and the layer to explain."""

    name: str
    model: nn.Module
    weight: float = 1.0
    layer: nn.Module | str | None = None


@dataclass
class Explanation:
    """Maps in the input's geometry, [N, H, W]: ``fused`` min-max scaled to [0, 1]; ``members``
    keyed by member name (one backbone's folds summed) on the fused map's scale, divided by its
    peak: a member's share of the evidence shows, and a member may exceed 1 where the other's
    negative evidence cancels it in the fused map."""

    fused: torch.Tensor
    members: dict[str, torch.Tensor]
    target: torch.Tensor  # [N] the class explained
    probability: torch.Tensor  # [N] its softmax probability under the fused logits


@contextmanager
def _untouched(models: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode for the call; every module's own mode restored afterwards (frozen norms included)."""
    modes = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for saved in modes:
            for module, training in saved:
                module.training = training


def _targets(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    count, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    target = (
        torch.as_tensor(target, dtype=torch.long).expand(count)
        if not torch.is_tensor(target) or target.ndim == 0
        else target.long()
    )
    if target.shape != (count,):
        raise ConfigError(f"target: give one class or one per image ({count}), not {tuple(target.shape)}")
    if bool(((target < 0) | (target >= classes)).any()):
        raise ConfigError(f"target {target.tolist()}: out of range; the model has classes 0..{classes - 1}")
    return target


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of [N, H, W] to [0, 1]; a map without any spread (all zero) is 0."""
    low = maps.flatten(1).min(1).values[:, None, None]
    spread = maps.flatten(1).max(1).values[:, None, None] - low
    # Any spread, however small, scales to [0, 1] (a floor of 1e-12 left maps of a barely active
    # layer short of 1); only a map without spread stays 0.
    return torch.where(
        spread > 0, (maps - low) / spread.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps)
    )


def _upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """[N, 1, h, w] -> [N, H, W], bilinear."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def fused_grad_cam(
    members: Sequence[Member], inputs: Sequence[torch.Tensor], target: int | torch.Tensor | None = None
) -> Explanation:
    """Grad-CAM of the fused logit sum_i w_i z_i (module docstring); ``inputs[i]`` is member i's
    preprocessed batch (the members may normalise differently; the sizes must agree)."""
    if len(inputs) != len(members):
        raise ConfigError(f"{len(members)} members but {len(inputs)} input batches")
    size = inputs[0].shape[-2:]
    if any(x.shape[-2:] != size for x in inputs):
        raise ConfigError("the members test at different image sizes; explain them one at a time")
    activations: dict[int, torch.Tensor] = {}
    hooks = []
    with _untouched([m.model for m in members]), torch.enable_grad():
        try:
            for index, member in enumerate(members):
                layer = resolve_layer(member.model, member.layer)
                hooks.append(
                    layer.register_forward_hook(lambda _m, _i, out, index=index: activations.__setitem__(index, out))
                )
            # The input requires grad, so the graph exists even when every parameter is frozen.
            logits = sum(m.weight * m.model(x.detach().requires_grad_(True)).float() for m, x in zip(members, inputs))
        finally:
            for hook in hooks:
                hook.remove()
        target = _targets(target, logits)
        score = logits.gather(1, target[:, None].to(logits.device)).sum()
        gradients = torch.autograd.grad(score, [activations[i] for i in range(len(members))])
    # Grad-CAM as Selvaraju et al. define it: the weighted activations summed (over a member's
    # folds too) at the layer's own resolution, the ReLU there, then the upsampling. The fused
    # map does the same with every member that carries weight when their layers share one
    # resolution (the exact Grad-CAM of the fused logit); otherwise it can only sum them after
    # upsampling, and takes the ReLU of that sum.
    layer_maps: dict[str, torch.Tensor] = {}
    carries: dict[str, bool] = {}
    for index, (member, gradient) in enumerate(zip(members, gradients)):
        activation = activations[index].detach().float()
        alpha = gradient.float().mean(dim=(2, 3), keepdim=True)
        weighted = (alpha * activation).sum(1, keepdim=True)
        previous = layer_maps.get(member.name)
        layer_maps[member.name] = weighted if previous is None else previous + weighted
        carries[member.name] = carries.get(member.name, False) or member.weight != 0
    carrying = [m for name, m in layer_maps.items() if carries[name]]
    if not carrying:
        fused = torch.zeros(len(logits), *size)
    elif len({tuple(m.shape[-2:]) for m in carrying}) == 1:
        fused = _upsample(torch.relu(sum(carrying)), size)
    else:
        fused = torch.relu(sum(_upsample(m, size) for m in carrying))
    # The members on the fused map's scale (1 = its peak), not each on its own: a member with
    # weight 0.1 looks a ninth as hot as one with 0.9 for the same evidence.
    peak = fused.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    maps = {name: _upsample(torch.relu(m), size) / peak for name, m in layer_maps.items()}
    fused = scale_to_unit(fused)
    probability = logits.detach().softmax(1).gather(1, target[:, None].to(logits.device))[:, 0]
    return Explanation(fused.cpu(), {n: m.cpu() for n, m in maps.items()}, target.cpu(), probability.cpu())


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: int | str | torch.Tensor | None = None,
    layer: nn.Module | str | None = None,
    classes: Sequence[str] | None = None,
) -> torch.Tensor:
    """Grad-CAM maps [N, H, W] in [0, 1] of ``model`` for preprocessed ``images`` [N, 3, H, W].

    ``target``: None explains each image's predicted class, an int (or a class name, with
    ``classes`` the model's class list) one class for all, a tensor [N] one class per image.
    ``layer``: a module or its name (default :func:`default_layer`).
    """
    if isinstance(target, str):
        if classes is None or target not in classes:
            known = f"one of {', '.join(classes)}" if classes is not None else "give classes=[...] to name a class"
            raise ValueError(f"grad_cam target {target!r}: {known}")
        target = list(classes).index(target)
    return fused_grad_cam([Member("model", model, 1.0, layer)], [images], target).fused


def fused_pair_members(pair: nn.Module, first: str = "first", second: str = "second") -> list[Member]:
    """The two members of a ``FusedPair`` with its weights alpha and 1 - alpha."""
    return [Member(first, pair.first, pair.alpha), Member(second, pair.second, 1.0 - pair.alpha)]


@torch.no_grad()
def occlusion(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    fill: torch.Tensor,
    target: int | torch.Tensor | None = None,
    patch: int = 16,
    stride: int = 8,
    batch_size: int = 64,
) -> torch.Tensor:
    """Occlusion sensitivity [N, H, W]: the drop of the target's probability when a ``patch``
    square of ``fill`` (the pad colour, normalised: [3]) covers each place, averaged over the
    patches that cover a pixel. Model-agnostic: ``predict`` maps a batch to logits (a model,
    a ``FusedPair``); the occluded copies of an image run ``batch_size`` at a time."""
    count, _, height, width = images.shape
    base = predict(images).float()
    target = _targets(target, base)
    base_probability = base.softmax(1).gather(1, target[:, None])[:, 0]
    tops = list(range(0, max(height - patch, 0) + 1, stride))
    lefts = list(range(0, max(width - patch, 0) + 1, stride))
    places = [(top, left) for top in tops for left in lefts]
    maps = torch.zeros(count, height, width)
    cover = torch.zeros(height, width)
    for top, left in places:
        cover[top : top + patch, left : left + patch] += 1
    fill = fill.to(images)[:, None, None]
    for n in range(count):
        for start in range(0, len(places), batch_size):
            chunk = places[start : start + batch_size]
            occluded = images[n : n + 1].repeat(len(chunk), 1, 1, 1)
            for k, (top, left) in enumerate(chunk):
                occluded[k, :, top : top + patch, left : left + patch] = fill
            probability = predict(occluded).float().softmax(1)[:, target[n]]
            for k, (top, left) in enumerate(chunk):
                maps[n, top : top + patch, left : left + patch] += float(base_probability[n] - probability[k])
    return maps / cover.clamp_min(1)


def to_original_geometry(maps: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Maps [N, S, S] over the letterboxed square -> [N, height, width] over the original image:
    the padding is cut off and the rest resized back (bilinear), so an overlay lines up with
    the file the user gave, whatever its aspect ratio."""
    size = maps.shape[-1]
    left, top, new_w, new_h = letterbox_box(width, height, size)
    inner = maps[:, top : top + new_h, left : left + new_w]
    return F.interpolate(inner[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def peak(maps: torch.Tensor) -> torch.Tensor:
    """(row, column) of each map's maximum, [N, 2]."""
    flat = maps.flatten(1).argmax(1)
    return torch.stack([flat // maps.shape[-1], flat % maps.shape[-1]], 1)


@dataclass
class ImageExplanation:
    """One image's explanation, maps in the image file's own geometry ([height, width], [0, 1])."""

    path: Path
    predicted: int  # the class explained: the predicted one unless a target was given
    probability: float
    fused: torch.Tensor
    members: dict[str, torch.Tensor]

    def figure_maps(self) -> dict[str, np.ndarray]:
        """Each member's map, then the fused one: the panels of an explanation figure."""
        return {name: m.numpy() for name, m in self.members.items()} | {"fused": self.fused.numpy()}


def explain_files(
    paths: Sequence[Path],
    folds: Sequence[Sequence["Classifier"]],
    weights: Sequence[Sequence[float]],
    names: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    targets: Sequence[int] | None = None,
) -> Iterator[ImageExplanation]:
    """Grad-CAM of the fused prediction of each image file, as ``fuse.py --predict`` makes it:
    ``folds[k][i]`` is member ``names[i]`` of fold k with weight ``weights[k][i]``, the folds'
    fused logits averaged (so each member weighs w / K). The maps explain the plain forward
    pass (without test-time augmentation) and come back in each file's geometry.
    ``targets``: the class to explain for each file (default: its predicted class)."""

    fused = FusedModel(folds, weights).to(device)  # the model fuse.py --predict computes with
    shares = fused.member_weights()
    members = [
        Member(name, c.model, shares[f][i])
        for f, fold in enumerate(folds)
        for i, (name, c) in enumerate(zip(names, fold))
    ]
    pipelines = {spec: from_spec(spec) for spec in fused.distinct_specs}
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        images = [load_rgb(p) for p in chunk]
        prepared = {
            spec: torch.stack([pipeline.scaled(image) for image in images]).to(device)
            for spec, pipeline in pipelines.items()
        }
        target = torch.as_tensor(list(targets[start : start + batch_size])) if targets is not None else None
        explanation = fused_grad_cam(members, [x for fold in fused.member_inputs(prepared) for x in fold], target)
        for n, (path, image) in enumerate(zip(chunk, images)):
            width, height = image.size
            back = lambda maps: to_original_geometry(maps[n : n + 1], width, height)[0]  # noqa: E731
            yield ImageExplanation(
                path,
                int(explanation.target[n]),
                float(explanation.probability[n]),
                back(explanation.fused),
                {name: back(maps) for name, maps in explanation.members.items()},
            )


def layer_size(model: nn.Module, input_size: int, layer: nn.Module | str | None = None) -> tuple[int, int]:
    """(height, width) of the map Grad-CAM reads at ``layer`` (default :func:`default_layer`)
    for an ``input_size`` square input: how coarse the model's explanation can be at best."""
    sizes = []
    hook = resolve_layer(model, layer).register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
    parameter = next(model.parameters())
    try:
        with _untouched([model]), torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        hook.remove()
    return sizes[0]


__all__ = [
    "Explanation",
    "ImageExplanation",
    "Member",
    "default_layer",
    "explain_files",
    "layer_size",
    "fused_grad_cam",
    "fused_pair_members",
    "grad_cam",
    "occlusion",
    "peak",
    "resolve_layer",
    "scale_to_unit",
    "to_original_geometry",
]
