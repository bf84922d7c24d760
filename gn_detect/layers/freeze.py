"""Freezing: a frozen module has no trainable parameters and stays in eval mode.

``freeze_module(m)`` sets ``requires_grad=False`` on every parameter below ``m``, puts ``m`` in
eval mode and overrides ``m.train`` on that instance so that ``parent.train()`` (which calls
``child.train(True)`` recursively) leaves it in eval mode. So a frozen stage means the same for
every norm: BN/SyncBN use their running statistics and never update them (and SyncBN never
communicates); GN/LN/affine/PN simply get no gradients (they have no batch statistics).

The override is a ``functools.partial`` of a module-level function stored in the instance
``__dict__``: unlike a bound lambda it survives ``copy.deepcopy`` and pickling (torch.save of a
whole model), and it adds nothing to the state dict. ``unfreeze_module`` undoes both parts.
"""

from __future__ import annotations

import functools

from torch import nn

__all__ = ["freeze_module", "unfreeze_module", "is_frozen"]


def _frozen_train(module: nn.Module, mode: bool = True) -> nn.Module:
    # Whatever mode is asked for, stay (recursively) in eval.
    return nn.Module.train(module, False)


def freeze_module(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place (no grads, eval mode that survives ``.train()``); returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.train = functools.partial(_frozen_train, module)  # type: ignore[method-assign]
    module.train(False)
    return module


def unfreeze_module(module: nn.Module, *, mode: bool = True) -> nn.Module:
    """Undo ``freeze_module``: parameters trainable again, ``train`` restored, set to ``mode``."""
    module.__dict__.pop("train", None)
    for sub in module.modules():
        sub.__dict__.pop("train", None)
    for p in module.parameters():
        p.requires_grad_(True)
    return module.train(mode)


def is_frozen(module: nn.Module) -> bool:
    """True if ``module`` itself was frozen with ``freeze_module`` (not only a parent)."""
    train = module.__dict__.get("train")
    return isinstance(train, functools.partial) and train.func is _frozen_train
