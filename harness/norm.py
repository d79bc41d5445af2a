"""What a norm plugin registers: a layer factory plus the facts the harness checks before training.

Kept free of torch imports so that listing and checking suites stays fast; the layer class is
imported on first use when ``make`` is given as a ``"package.module:Attr"`` string.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Input layouts a norm may support: ``1d`` is N×C (MLP features), ``2d`` is N×C×H×W.
DIMS = frozenset({"1d", "2d"})


def resolve(target: Any) -> Any:
    """Import ``"package.module:Attr"`` (or return ``target`` unchanged if it is an object)."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"{target!r} is not of the form 'package.module:Attr'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Param:
    """One norm (or task) parameter: its default and, optionally, the range a search may use."""

    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def searchable(self) -> bool:
        return self.choices is not None or (self.low is not None and self.high is not None)


@dataclass(frozen=True)
class Norm:
    """A normalization method as the harness sees it.

    ``make(num_features, **params)`` builds the layer (timm's convention: ``num_features``
    first, extra keyword arguments such as ``eps`` or ``device`` accepted). ``params`` lists the
    parameters a suite may set; when it is ``None`` they are read from ``make``'s signature.
    ``needs`` names capabilities the task must provide (for example ``"unlabeled"``).
    ``protocol`` (a callable or ``"module:Attr"``) is called with the norm's parameters and
    returns a :class:`harness.protocol.NormProtocol` (or None) for norms that need the training
    loop to cooperate: extra losses, steps after the optimizer, batch composition, evaluations.
    ``reference(num_features, **params)`` (optional) builds a module that a freshly made layer
    must match in training mode: the equivalence the conformance kit checks.
    """

    name: str
    make: Callable[..., Any] | str
    summary: str = ""
    citation: str = ""
    params: Mapping[str, Param] | None = None
    dims: frozenset[str] = DIMS
    needs: frozenset[str] = frozenset()
    protocol: Any = None
    reference: Any = None
    source: str = field(default="", compare=False)  # filled in by the plugin manager

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", frozenset(self.dims))
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = self.dims - DIMS
        if unknown:
            raise ValueError(f"norm {self.name!r}: unknown dims {sorted(unknown)}; use {sorted(DIMS)}")

    def factory(self) -> Callable[..., Any]:
        return resolve(self.make)

    def parameters(self) -> Mapping[str, Param] | None:
        """Declared parameters, or those of ``make``'s signature if it is already imported."""
        if self.params is not None:
            return self.params
        if isinstance(self.make, str):
            return None  # unknown until imported; checked when the layer is built
        return signature_params(self.make)

    def make_protocol(self, **params: Any) -> Any:
        """The protocol for these parameters, or None for a norm that is just a layer."""
        if self.protocol is None:
            return None
        defaults = {k: p.default for k, p in (self.params or {}).items()}
        return resolve(self.protocol)(**{**defaults, **params})

    def layer(self, **params: Any) -> Callable[..., Any]:
        """The ``norm_layer`` callable a model builder calls as ``norm_layer(num_features)``."""
        defaults = {k: p.default for k, p in (self.params or {}).items()}
        return functools.partial(self.factory(), **{**defaults, **params})


def signature_params(make: Callable[..., Any]) -> dict[str, Param]:
    """Keyword parameters of a layer factory after ``num_features``, with their defaults."""
    found: dict[str, Param] = {}
    params = list(inspect.signature(make).parameters.values())
    for p in params[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        found[p.name] = Param(default=None if p.default is p.empty else p.default)
    return found
