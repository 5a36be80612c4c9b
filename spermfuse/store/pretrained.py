"""Pretrained checkpoints by name: the catalogue's entries (``catalogue.py``), downloaded once
into a verified cache (``download.py``) and loaded with ``models.weights``.

The only path from a model to the network, kept out of ``models/`` so that the networks and
their local-file loading can be copied without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.files import CheckpointError
from ..core.models import LoadReport, WeightsError, create_model, get_spec, load_weights
from ..core.models.efficientnet import PADDINGS
from ..core.models.weights import convert, load_state
from .catalogue import find_entry
from .download import fetch, has_digest, record_first_use

log = logging.getLogger(__name__)


def resolve_padding(name: str, pretrained: str | bool | None = None, padding: str | None = None) -> str:
    """The padding to build ``name`` with: ``padding`` when given, else what the catalogued
    checkpoint ``pretrained`` was trained with ("same" for TensorFlow's), else symmetric."""
    if padding is not None:
        if padding not in PADDINGS:
            raise ConfigError(f"--padding {padding}: choose one of {', '.join(PADDINGS)}")
        return padding
    if pretrained:
        return find_entry(name, pretrained).padding
    return "symmetric"


def load_initial_weights(
    model: nn.Module, name: str, *, pretrained: str | bool | None = None, weights: str | Path | None = None
) -> LoadReport | None:
    """Load the starting weights of a registered model; the report says what the weights expect
    (their mean/std); None when neither is asked (random initialisation)."""
    if pretrained and weights is not None:
        raise ConfigError("give either --pretrained or --weights PATH, not both")
    if pretrained:
        return load_pretrained(model, name, pretrained)
    if weights is not None:
        return load_weights(model, weights, get_spec(name), name)
    return None


def load_pretrained(model: nn.Module, name: str, tag: str | bool | None = "default") -> LoadReport:
    """The catalogued checkpoint ``tag`` of ``name`` (``catalogue.py``), downloaded on first use.

    The file must use the layer names its entry states; the input normalisation is the
    entry's. Only this function reaches the network, and only when ``--pretrained`` asks.
    """
    entry = find_entry(name, tag)
    path = fetch(entry)
    trusted = has_digest(path, entry)
    try:
        spec = get_spec(name)
        state, fmt, _ = convert(model, path, spec)
        if fmt != entry.layout:
            raise CheckpointError(
                f"{path}: holds {fmt} names where the catalogue's {name} {entry.tag} says {entry.layout}"
            )
    except (CheckpointError, WeightsError) as error:
        if not trusted:  # a first file without a digest that is not what its entry declares: never trusted, never kept
            path.unlink(missing_ok=True)
            raise WeightsError(f"{error}; it was deleted (nothing recorded): check the entry's url") from None
        raise WeightsError(f"{error}; delete it to download it again") from None
    record_first_use(path, entry)
    with torch.no_grad():
        report = load_state(model, state, spec.head, f"{name} {entry.tag} ({path})", fmt)
    report.mean, report.std = tuple(entry.mean), tuple(entry.std)
    log.info("%s; expects mean %s std %s", report, report.mean, report.std)
    return report


def create_pretrained_model(
    name: str,
    num_classes: int,
    tag: str | bool = "default",
    *,
    dropout: float | None = None,
    drop_path: float = 0.0,
    padding: str | None = None,
) -> nn.Module:
    """:func:`models.create_model` started from the catalogued checkpoint ``tag`` of ``name``
    (True or "default": the paper's), downloaded on first use; built with the padding that
    checkpoint was trained with unless ``padding`` says otherwise."""
    model = create_model(
        name, num_classes, dropout=dropout, drop_path=drop_path, padding=resolve_padding(name, tag, padding)
    )
    load_pretrained(model, name, tag)
    return model
