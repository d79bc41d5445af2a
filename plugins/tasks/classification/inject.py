"""Putting a norm into a model: through the builder's ``norm_layer`` when it has one, else by swap.

Used by :func:`.models.create`; torch is imported inside the functions so that light code may
import this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

NormLayer = Callable[[int], "nn.Module"]


def swap_batchnorm(model: nn.Module, norm_layer: NormLayer) -> nn.Module:
    """Replace, in place, every batch-norm submodule of ``model`` by ``norm_layer(num_features)``.

    Matches every subclass of torch's ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm, timm's
    BatchNormAct2d). timm's norm+activation layers (those with ``drop`` and ``act``) become
    ``Sequential(norm, drop, act)`` so the activation they fuse is kept. The new module gets the
    device and floating dtype of the old one. A module shared between parents stays shared.
    Returns ``model``.
    """
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    replaced: dict[int, nn.Module] = {}

    def replacement(old: _BatchNorm) -> nn.Module:
        new = norm_layer(old.num_features)
        like = next((t for t in chain(old.parameters(), old.buffers()) if t.is_floating_point()), None)
        if like is not None:
            new = new.to(device=like.device, dtype=like.dtype)
        if hasattr(old, "act") and hasattr(old, "drop"):
            new = nn.Sequential(new, old.drop, old.act)
        return new

    # Every path to a batch norm (a shared one has several); collected first so that the new
    # modules, which may subclass _BatchNorm themselves, are never revisited.
    paths = model.named_modules(remove_duplicate=False)
    found = [(name, m) for name, m in paths if name and isinstance(m, _BatchNorm)]
    for name, old in found:
        if id(old) not in replaced:
            replaced[id(old)] = replacement(old)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, replaced[id(old)])
    return model


def build_with_norm(
    builder: Callable[..., nn.Module],
    norm_layer: NormLayer,
    *,
    passes_norm_layer: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model with ``norm_layer`` as its normalization.

    A builder that takes ``norm_layer`` gets it, so the norm goes exactly where the model's own
    code puts one; otherwise the model is built as is and its batch norms are swapped (the
    fallback). ``passes_norm_layer`` says which applies; ``None`` reads it from the signature,
    where a ``**kwargs``-only builder (``timm.create_model``) counts as not taking it.
    """
    if passes_norm_layer is None:
        passes_norm_layer = _names_norm_layer(builder)
    if passes_norm_layer:
        return builder(norm_layer=norm_layer, **kwargs)
    return swap_batchnorm(builder(**kwargs), norm_layer)


def _names_norm_layer(builder: Callable[..., Any]) -> bool:
    """Whether ``builder`` has a ``norm_layer`` keyword parameter of its own (``**kwargs`` is not one)."""
    param = inspect.signature(builder).parameters.get("norm_layer")
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
