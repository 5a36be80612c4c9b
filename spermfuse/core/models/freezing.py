"""Freezing for method B's two stages: head only, then the last n layers.

What counts as a layer: Keras lists every layer of a functional model, including the
ones without weights (activations, pooling, dropout, additions). The closest PyTorch
equivalent is the list of *leaf modules* (modules without children) in registration
order, which is what ``layers`` returns; element-wise operations written inline in a
``forward`` (residual additions, SE multiplications) are not modules and do not count.
``unfreeze_last(model, 60)`` makes the parameters of the last 60 leaf modules trainable.
Frozen BatchNorm layers stay in inference mode (running statistics), as in Keras.
"""

from __future__ import annotations

from torch import nn


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules in registration order: what :func:`unfreeze_last` counts."""
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


def freeze_backbone(model: nn.Module, head: str) -> None:
    """Only the parameters of the ``head`` module (e.g. ``classifier.1``) stay trainable."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(head + ".")


def unfreeze_last(model: nn.Module, n: int) -> list[str]:
    """Make the last ``n`` leaf modules trainable (counted from the output end); returns their names."""
    chosen = layers(model)[-n:] if n > 0 else []
    for _, module in chosen:
        for parameter in module.parameters():
            parameter.requires_grad = True
    return [name for name, _ in chosen]


def set_trainable(model: nn.Module, head: str, trainable: str | int) -> int:
    """A stage's trainable parameters: ``"all"``, ``"head"`` (the ``head`` module only) or the
    last ``trainable`` layers with the head; returns how many parameters train."""
    if trainable == "all":
        for parameter in model.parameters():
            parameter.requires_grad = True
    else:
        freeze_backbone(model, head)
        if trainable != "head":
            unfreeze_last(model, int(trainable))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_frozen_norms_to_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are frozen into eval mode (call after ``model.train()``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
