"""The named pretrained checkpoints each architecture accepts: ``--pretrained [TAG]``.

One row per checkpoint: where it is served, in which file format and layer names, under
which licence, its SHA-256 where known, and how the network must be built and fed for it
(TensorFlow "same" padding, input mean/std). The default tag of each architecture is the
checkpoint its paper fine-tunes:

- method A: EfficientNetV2-S pretrained on ImageNet-21k and fine-tuned on 1k by its authors
  in TensorFlow (timm's ``tf_efficientnetv2_s.in21k_ft_in1k``), and BiT's R50x1 distilled
  from BiT-M R152x2 (timm's ``resnetv2_50x1_bit.goog_distilled_in1k``): the paper's
  ResNet50V2 "benefited from knowledge distillation during the pretraining phase" (Sec. 2.4.2);
- method B: Keras's ImageNet EfficientNet-B4, the TensorFlow original of timm's
  ``tf_efficientnet_b4``.

``sha256`` is a full digest or, for files published the torch.hub way, the leading hex digits
that the file name carries. Where none is known, the digest of the first download is
recorded beside the cached file and checked on every later use (``spermfuse/store/download.py``).

A lab without internet points ``$SPERMFUSE_WEIGHTS_CATALOGUE`` at a JSON file of its own:
``{"<arch>": {"<tag>": {"url": ..., ...}}}`` with the fields of :class:`WeightsEntry`. An entry
for an existing tag changes only the fields it gives (a mirror gives just its ``url``); a new
tag needs ``url``, ``format`` and ``layout``; ``"default": true`` makes a tag the default.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..core.errors import ConfigError
from ..core.models.efficientnet import PADDINGS
from ..core.models.registry import REGISTRY
from ..core.normalization import IMAGENET_MEAN, IMAGENET_STD, UNIT_RANGE_MEAN, UNIT_RANGE_STD

CATALOGUE_VARIABLE = "SPERMFUSE_WEIGHTS_CATALOGUE"
FORMATS = ("pytorch", "npz", "safetensors")
# The layer names a file uses, as ``weights.convert`` recognises them.
LAYOUTS = ("state dict", "timm EfficientNet", "timm ResNetV2", "BiT .npz")
SUFFIXES = {"pytorch": ".pth", "npz": ".npz", "safetensors": ".safetensors"}


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint of one architecture."""

    arch: str
    tag: str
    url: str
    format: str  # pytorch | npz | safetensors
    layout: str  # the layer names: one of LAYOUTS ("state dict": torchvision's, which are ours)
    licence: str
    description: str = ""
    sha256: str | None = None  # full digest or its leading digits; None: recorded at first download
    padding: str = "symmetric"  # "same" for checkpoints trained in TensorFlow
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default: bool = False

    @property
    def file_name(self) -> str:
        """The cached file's name: unique per (arch, tag), whatever the URL's last part."""
        return f"{self.arch.replace(':', '_')}-{self.tag}{SUFFIXES[self.format]}"


_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_TIMM_RELEASES = "https://github.com/huggingface/pytorch-image-models/releases/download/"
_TORCHVISION = "https://download.pytorch.org/models/"
_BIT = "https://storage.googleapis.com/bit_models/"
_APACHE = "Apache-2.0"
_BSD = "BSD-3-Clause (torchvision)"
_UNIT = dict(mean=UNIT_RANGE_MEAN, std=UNIT_RANGE_STD)

BUILT_IN: tuple[WeightsEntry, ...] = (
    WeightsEntry(
        "efficientnetv2_s",
        "tf_in21k_ft_in1k",
        _TIMM_RELEASES + "v0.1-effv2-weights/tf_efficientnetv2_s_21ft1k-d7dafa41.pth",
        "pytorch",
        "timm EfficientNet",
        _APACHE,
        "method A's: the authors' TF ImageNet-21k -> 1k weights (timm tf_efficientnetv2_s.in21k_ft_in1k)",
        sha256="d7dafa41",
        padding="same",
        default=True,
        **_UNIT,
    ),
    WeightsEntry(
        "efficientnetv2_s",
        "tf_in21k_ft_in1k_hf",
        _HF.format("tf_efficientnetv2_s.in21k_ft_in1k"),
        "safetensors",
        "timm EfficientNet",
        _APACHE,
        "the same weights from the Hugging Face hub",
        padding="same",
        **_UNIT,
    ),
    WeightsEntry(
        "efficientnetv2_s",
        "torchvision_in1k",
        _TORCHVISION + "efficientnet_v2_s-dd5fe13b.pth",
        "pytorch",
        "state dict",
        _BSD,
        "torchvision's ImageNet-1k weights (trained in PyTorch)",
        sha256="dd5fe13b",
    ),
    WeightsEntry(
        "resnet50v2",
        "bit_m_in21k",
        _BIT + "BiT-M-R50x1.npz",
        "npz",
        "BiT .npz",
        _APACHE,
        "Google's BiT-M R50x1 (ImageNet-21k), not distilled",
        **_UNIT,
    ),
    WeightsEntry(
        "resnet50v2",
        "bit_m_in21k_ft_in1k",
        _BIT + "BiT-M-R50x1-ILSVRC2012.npz",
        "npz",
        "BiT .npz",
        _APACHE,
        "BiT-M R50x1 fine-tuned on ImageNet-1k",
        **_UNIT,
    ),
    WeightsEntry(
        "resnet50v2",
        "bit_distilled_in1k",
        _HF.format("resnetv2_50x1_bit.goog_distilled_in1k"),
        "safetensors",
        "timm ResNetV2",
        _APACHE,
        "method A's: BiT R50x1 distilled from BiT-M R152x2 on ImageNet-1k (timm resnetv2_50x1_bit.goog_distilled_in1k)",
        default=True,
        **_UNIT,
    ),
    WeightsEntry(
        "efficientnet_b4",
        "tf_in1k",
        _TIMM_RELEASES + "v0.1-weights/tf_efficientnet_b4-74ee3bed.pth",
        "pytorch",
        "timm EfficientNet",
        _APACHE,
        "method B's: the TF/Keras ImageNet weights (timm tf_efficientnet_b4.in1k)",
        sha256="74ee3bed",
        padding="same",
        default=True,
    ),
    WeightsEntry(
        "efficientnet_b4",
        "torchvision_in1k",
        _TORCHVISION + "efficientnet_b4_rwightman-23ab8bcd.pth",
        "pytorch",
        "state dict",
        _BSD,
        "torchvision's ImageNet-1k weights (trained in PyTorch)",
        sha256="23ab8bcd",
    ),
    WeightsEntry(
        "efficientnet_b0",
        "torchvision_in1k",
        _TORCHVISION + "efficientnet_b0_rwightman-7f5810bc.pth",
        "pytorch",
        "state dict",
        _BSD,
        "torchvision's ImageNet-1k weights",
        sha256="7f5810bc",
        default=True,
    ),
    WeightsEntry(
        "efficientnet_b0",
        "tf_in1k",
        _TIMM_RELEASES + "v0.1-weights/tf_efficientnet_b0-0af12548.pth",
        "pytorch",
        "timm EfficientNet",
        _APACHE,
        "the TF ImageNet weights (timm tf_efficientnet_b0.in1k)",
        sha256="0af12548",
        padding="same",
    ),
)

Catalogue = dict[str, dict[str, WeightsEntry]]  # arch -> tag -> entry


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check(entry: WeightsEntry, source: str) -> WeightsEntry:
    where = f"{source}: {entry.arch} {entry.tag}"
    for what, name in (("tag", entry.tag), ("architecture", entry.arch)):
        if not _TAG.fullmatch(name) or ".." in name:
            raise ConfigError(
                f"{source}: {what} {name!r} may hold only letters, digits, '_', '.' and '-' (it names a cache file)"
            )
    if entry.format not in FORMATS:
        raise ConfigError(f"{where}: format {entry.format!r} is not one of {', '.join(FORMATS)}")
    if entry.layout not in LAYOUTS:
        raise ConfigError(f"{where}: layout {entry.layout!r} is not one of {', '.join(LAYOUTS)}")
    if entry.padding not in PADDINGS:
        raise ConfigError(f"{where}: padding {entry.padding!r} is not one of {', '.join(PADDINGS)}")
    if entry.sha256 is not None and (
        len(entry.sha256) < 8 or any(ch not in "0123456789abcdef" for ch in entry.sha256.lower())
    ):
        raise ConfigError(f"{where}: sha256 must be hex digits (at least the first 8)")
    if len(entry.mean) != 3 or len(entry.std) != 3:
        raise ConfigError(f"{where}: mean and std take three values each")
    return entry


def _read_overrides(path: Path) -> dict:
    source = f"${CATALOGUE_VARIABLE}={path}"
    try:
        overrides = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{source}: cannot read it ({error.strerror}); fix the path or unset the variable") from None
    except ValueError as error:
        raise ConfigError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(overrides, dict) or not all(isinstance(tags, dict) for tags in overrides.values()):
        raise ConfigError(f'{source}: expected {{"<arch>": {{"<tag>": {{"url": ...}}}}}}')
    return overrides


def load_catalogue(environ: dict[str, str] | None = None) -> Catalogue:
    """The built-in table with the entries of ``$SPERMFUSE_WEIGHTS_CATALOGUE`` on top."""
    catalogue: Catalogue = {}
    for entry in BUILT_IN:
        catalogue.setdefault(entry.arch, {})[entry.tag] = entry
    path = (os.environ if environ is None else environ).get(CATALOGUE_VARIABLE)
    if not path:
        return catalogue
    source = f"${CATALOGUE_VARIABLE}={path}"
    known = {f.name for f in fields(WeightsEntry)} - {"arch", "tag"}
    for arch, tags in _read_overrides(Path(path)).items():
        if arch not in REGISTRY:
            raise ConfigError(f"{source}: unknown architecture {arch!r}; choose among {', '.join(REGISTRY)}")
        for tag, values in tags.items():
            unknown = set(values) - known if isinstance(values, dict) else {"(not an object)"}
            if unknown:
                raise ConfigError(
                    f"{source}: {arch} {tag}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
                )
            values = {k: tuple(v) if k in ("mean", "std") else v for k, v in values.items()}
            existing = catalogue.get(arch, {}).get(tag)
            if existing is None:
                missing = {"url", "format", "layout"} - set(values)
                if missing:
                    raise ConfigError(f"{source}: {arch} {tag}: a new tag needs {', '.join(sorted(missing))}")
                values.setdefault("licence", "see the mirror")
                entry = WeightsEntry(arch, tag, **values)
            else:
                entry = replace(existing, **values)
            if entry.default:
                catalogue[arch] = {t: replace(e, default=False) for t, e in catalogue.get(arch, {}).items()}
            catalogue.setdefault(arch, {})[tag] = _check(entry, source)
    return catalogue


_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.pth$")


def torchvision_entries(arch: str) -> dict[str, WeightsEntry]:
    """``tv:<name>``'s published checkpoints, as torchvision lists them (``get_model_weights``):
    the tag is the weights' enum name in lower case (``imagenet1k_v1``), the default torchvision's
    own; the digest is the leading hex digits its file name carries (the full SHA-256 is not
    published: the first download's is recorded and checked after)."""
    import torchvision

    base = arch.removeprefix("tv:")
    weights = torchvision.models.get_model_weights(base)
    default = torchvision.models.get_model_weights(base).DEFAULT
    entries = {}
    for member in weights:
        digest = _HASH_IN_NAME.search(member.url)
        entries[member.name.lower()] = WeightsEntry(
            arch,
            member.name.lower(),
            member.url,
            "pytorch",
            "state dict",
            "see torchvision's documentation of the model (code: BSD-3-Clause)",
            f"torchvision's {member.name} weights",
            sha256=digest.group(1) if digest else None,
            default=member is default,
        )
    return entries


def find_entry(arch: str, tag: str | bool | None = "default", catalogue: Catalogue | None = None) -> WeightsEntry:
    """The entry ``--pretrained [TAG]`` names for ``arch``; ``"default"`` (or True) is its paper's
    (for ``tv:<name>``, torchvision's default weights)."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    entries = catalogue.get(arch, {})
    if not entries and arch.startswith("tv:"):
        entries = torchvision_entries(arch)
    if not entries:
        raise ConfigError(
            f"--pretrained: no catalogued weights for {arch}; pass a local file with --weights PATH "
            f"or add an entry through ${CATALOGUE_VARIABLE} (python train.py --list-weights)"
        )
    if tag in (None, True, "default"):
        defaults = [entry for entry in entries.values() if entry.default]
        return defaults[0] if defaults else next(iter(entries.values()))
    if tag not in entries:
        raise ConfigError(f"--pretrained {tag}: not a checkpoint of {arch}; choose one of {', '.join(entries)}")
    return entries[tag]


def catalogue_table(catalogue: Catalogue | None = None) -> str:
    """The catalogue as a plain-text table (``train.py --list-weights``)."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    lines = []
    for arch, entries in catalogue.items():
        lines.append(arch)
        for entry in entries.values():
            digest = f"sha256 {entry.sha256}" if entry.sha256 else "sha256 recorded at first download"
            mean = "0.5" if entry.mean == UNIT_RANGE_MEAN else "ImageNet"
            lines.append(f"  {entry.tag}{' (default)' if entry.default else ''}: {entry.description}")
            lines.append(
                f"      {entry.format}, {entry.layout} names, padding {entry.padding}, mean/std {mean}, {digest}, licence {entry.licence}"
            )
            lines.append(f"      {entry.url}")
    lines.append(
        "tv:<name>: torchvision's published weights of that classifier, tag imagenet1k_v1 etc. (default: its own)"
    )
    return "\n".join(lines)
