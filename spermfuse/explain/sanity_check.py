"""A sanity check of saliency maps that can fail: cascading randomisation (Adebayo et al. 2018).

The weights of a trained network are re-initialised block by block from the logits downward
(the head, then each stage in turn, cumulatively), the explained class held fixed, and each
randomised network's map is compared with the trained one: Spearman rank correlation and SSIM,
per image, with bootstrap intervals over images. A map that shows what the model learned
decorrelates as the weights go; a map that stays similar shows the image (an edge detector
would pass for an explanation). Beside the curve, two references: the similarity of two
independently randomised networks' maps (what the architecture and the input alone give), and
the trained map's similarity to a model-free map of the image (its blurred darkness).

Grad-CAM maps are rectified (ReLU), so the "absolute value" variant of the check is the same
map here.

The check *fails* when the fully randomised network's maps still correlate with the trained
ones: the upper end of the Spearman interval at the last step is at least ``threshold``. A flat
trained map (zero everywhere: no gradient reached the class, as in an untrained pair) correlates
with nothing, so it would count as a pass; such maps are left out of the comparisons with the
trained maps, and when every trained map is flat the check is *inconclusive*, not passed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr
from torch import nn

from ..core.errors import ConfigError
from ..core.models.efficientnet import is_efficientnet
from ..core.models.resnetv2 import ResNetV2
from .pointing_game import bootstrap_interval

FAIL_THRESHOLD = 0.5  # Spearman at full randomisation: at or above, the maps do not depend on the weights


def cascade_blocks(model: nn.Module) -> list[list[nn.Module]]:
    """A registered architecture's blocks from the logits downward: the EfficientNet's
    classifier, then its feature stages last to first; the ResNetV2's head, its last stage with
    the final norm, then the other stages and the stem."""
    if is_efficientnet(model):
        return [[model.classifier]] + [[stage] for stage in reversed(model.features)]
    if isinstance(model, ResNetV2):
        stages = list(model.stages)
        return [[model.fc], [stages[-1], model.norm]] + [[stage] for stage in reversed(stages[:-1])] + [[model.stem]]
    raise ConfigError(f"no cascading-randomisation blocks for {type(model).__name__}")


def randomly_initialised(model: nn.Module, modules: Sequence[nn.Module] | None = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose ``modules`` (default: all of it) are freshly
    initialised, seeded (repeatable figures; the caller's random generator is left as it was)."""
    chosen = {id(m) for block in (modules if modules is not None else [model]) for m in block.modules()}
    originals = dict(model.named_modules())
    copied = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for name, module in copied.named_modules():
            if id(originals[name]) in chosen and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return copied.eval()


def cascaded(model: nn.Module, step: int, seed: int = 0) -> nn.Module:
    """``model`` with its first ``step + 1`` blocks of :func:`cascade_blocks` re-initialised
    (a network with fewer blocks is then wholly random)."""
    blocks = cascade_blocks(model)
    return randomly_initialised(model, [m for block in blocks[: step + 1] for m in block], seed)


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Structural similarity of two maps in [0, 1] (Wang et al. 2004; Gaussian window ``sigma``,
    the usual constants for a data range of 1), averaged over the map."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c1, c2 = 0.01**2, 0.03**2
    mean_a, mean_b = ndimage.gaussian_filter(a, sigma), ndimage.gaussian_filter(b, sigma)
    var_a = ndimage.gaussian_filter(a * a, sigma) - mean_a**2
    var_b = ndimage.gaussian_filter(b * b, sigma) - mean_b**2
    covariance = ndimage.gaussian_filter(a * b, sigma) - mean_a * mean_b
    value = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(value.mean())


def is_flat(saliency: np.ndarray) -> bool:
    """Whether a map is constant: it ranks no pixel above another."""
    return bool(saliency.min() == saliency.max())


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps over all pixels (0 when either is flat)."""
    a, b = np.ravel(a), np.ravel(b)
    if is_flat(a) or is_flat(b):
        return 0.0
    return float(np.nan_to_num(spearmanr(a, b).statistic))


@dataclass
class Similarity:
    """Mean similarity over images with its bootstrap 95 % interval."""

    mean: float
    low: float
    high: float


def _similarity(values: Sequence[float], seed: int) -> Similarity:
    low, high = bootstrap_interval(np.asarray(values), seed=seed)
    return Similarity(float(np.mean(values)), low, high)


@dataclass
class RandomisationCurve:
    """The check's result: per step (``steps``: what is random by then), Spearman and SSIM
    against the trained maps; the two-random-networks null; the model-free reference."""

    steps: list[str]
    spearman: list[Similarity]
    ssim: list[Similarity]
    null_spearman: Similarity
    null_ssim: Similarity
    darkness_spearman: Similarity
    images: int
    threshold: float = FAIL_THRESHOLD
    flat_maps: int = 0  # trained maps that are constant, left out of the comparisons with them

    @property
    def inconclusive(self) -> bool:
        """Every trained map is flat: there is nothing the randomised maps could keep or lose."""
        return self.flat_maps == self.images

    @property
    def fails(self) -> bool:
        """The fully randomised network's maps still correlate with the trained ones."""
        return not self.inconclusive and self.spearman[-1].high >= self.threshold

    def to_dict(self) -> dict:
        return asdict(self) | {"fails": self.fails, "inconclusive": self.inconclusive}


def randomisation_curve(
    maps_at: Callable[[int], Sequence[np.ndarray]],
    steps: Sequence[str],
    trained: Sequence[np.ndarray],
    null_pair: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
    darkness: Sequence[np.ndarray],
    threshold: float = FAIL_THRESHOLD,
) -> RandomisationCurve:
    """Compare ``trained`` maps with ``maps_at(step)`` for every step (the cascade), the two maps
    of ``null_pair`` with each other, and ``trained`` with ``darkness``; one value per image, of
    the images whose trained map is not flat (all of them when every one is: module docstring)."""
    flat = [is_flat(a) for a in trained]
    informative = [i for i, is_flat in enumerate(flat) if not is_flat] or list(range(len(trained)))

    def against_trained(measure, maps: Sequence[np.ndarray], seed: int) -> Similarity:
        return _similarity([measure(trained[i], maps[i]) for i in informative], seed)

    spearman, structural = [], []
    for step in range(len(steps)):
        randomised = maps_at(step)
        spearman.append(against_trained(rank_correlation, randomised, step))
        structural.append(against_trained(ssim, randomised, step))
    first, second = null_pair
    return RandomisationCurve(
        steps=list(steps),
        spearman=spearman,
        ssim=structural,
        null_spearman=_similarity([rank_correlation(a, b) for a, b in zip(first, second)], 101),
        null_ssim=_similarity([ssim(a, b) for a, b in zip(first, second)], 102),
        darkness_spearman=against_trained(rank_correlation, darkness, 103),
        images=len(trained),
        threshold=threshold,
        flat_maps=sum(flat),
    )
