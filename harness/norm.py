"""What a norm plugin registers: a layer factory, its parameters as one pydantic model, and the
facts the harness checks before training.

A norm's parameters are defined once, in its :class:`NormConfig` subclass: type, default, range,
help and the range a search may try. A suite's ``[[norm]]`` keys are validated by that model;
the layer gets the validated values (and nothing a model builder passes overrides them), and
the norm's protocol gets the whole config. Kept free of torch imports so that listing and
checking suites stays fast; the layer class is imported on first use when ``make`` is given as
a ``"package.module:Attr"`` string.
"""

from __future__ import annotations

import pkgutil
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

#: Input layouts a norm may support: ``1d`` is N×C (MLP features), ``2d`` is N×C×H×W.
DIMS = frozenset({"1d", "2d"})
#: Keywords of a model builder's ``norm_layer(num_features, **kwargs)`` call that reach the layer:
#: where to put it. A builder's ``eps`` or ``momentum`` (timm, mmcv) never does: the suite's does.
PLACEMENT = ("device", "dtype")


def resolve(target: Any) -> Any:
    """Import ``"package.module:Attr"``, or return ``target`` unchanged if it is an object."""
    return pkgutil.resolve_name(target) if isinstance(target, str) else target


@dataclass(frozen=True)
class Search:
    """The range a hyperparameter search may try for a numeric field of a :class:`NormConfig`,
    declared on the field: ``momentum: Annotated[float, Search(0.01, 0.5, log=True)] = 0.1``.
    ``Literal`` and ``bool`` fields are searched over their values and need none."""

    low: float
    high: float
    log: bool = False


class NormConfig(BaseModel):
    """A norm's parameters: the keys its ``[[norm]]`` entry in a suite may set.

    Subclass it per norm with a field per parameter (type, default, bounds, ``description``).
    The suite's values are checked strictly (``momentum = "0.1"`` is an error, not a coercion),
    NaN and infinity are refused, and so are unknown keys. ``protocol_only`` names the fields
    only the norm's protocol reads; the layer factory gets the others as keyword arguments. A
    config composed of several (mixin) configs has the union of their ``protocol_only``.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    protocol_only: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.protocol_only = frozenset().union(*(vars(k).get("protocol_only", ()) for k in cls.__mro__))

    def needs(self) -> frozenset[str]:
        """Capabilities this configuration needs beyond the norm's own ``needs`` (e.g. those of
        the base normalization it chose)."""
        return frozenset()

    def layer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the layer factory."""
        return {name: value for name, value in self if name not in self.protocol_only}

    @classmethod
    def search_space(cls) -> dict[str, Search | tuple[Any, ...]]:
        """Each searchable field: its :class:`Search` range, or the values of a ``Literal``/``bool``."""
        space: dict[str, Search | tuple[Any, ...]] = {}
        for name, info in cls.model_fields.items():
            declared = next((m for m in info.metadata if isinstance(m, Search)), None)
            if declared is not None:
                space[name] = declared
            elif typing.get_origin(info.annotation) is typing.Literal:
                space[name] = typing.get_args(info.annotation)
            elif info.annotation is bool:
                space[name] = (False, True)
        return space


@dataclass(frozen=True)
class Norm:
    """A normalization method as the harness sees it.

    ``make(num_features, **config.layer_kwargs(), device=..., dtype=...)`` builds the layer
    (timm's convention: ``num_features`` first); ``config`` is the norm's :class:`NormConfig`.
    ``needs`` names capabilities the task must provide (for example ``"unlabeled"``).
    ``protocol(config)`` (a callable or ``"module:Attr"``) returns a
    :class:`harness.protocol.NormProtocol` (or None) for norms that need the training loop to
    cooperate: extra losses, steps after the optimizer, batch composition, evaluations.
    ``reference(num_features, **config.layer_kwargs())`` (optional) builds a module that a
    freshly made layer must match in training mode: the equivalence the conformance kit checks.
    """

    name: str
    make: Callable[..., Any] | str
    config: type[NormConfig] = NormConfig
    summary: str = ""
    citation: str = ""
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
        if not (isinstance(self.config, type) and issubclass(self.config, NormConfig)):
            raise TypeError(f"norm {self.name!r}: config must be a harness.NormConfig subclass")

    def factory(self) -> Callable[..., Any]:
        return resolve(self.make)

    def layer(self, config: NormConfig | None = None) -> Callable[..., Any]:
        """The ``norm_layer`` a model builder calls as ``norm_layer(num_features, **kwargs)``, with
        this config's values (the defaults when None). Of the builder's keywords only
        :data:`PLACEMENT` reach the layer."""
        make, params = self.factory(), (config or self.config()).layer_kwargs()

        def norm_layer(num_features: int, **kwargs: Any) -> Any:
            placement = {k: kwargs[k] for k in PLACEMENT if kwargs.get(k) is not None}
            return make(num_features, **params, **placement)

        return norm_layer

    def make_protocol(self, config: NormConfig | None = None) -> Any:
        """The protocol for this config, or None for a norm that is just a layer."""
        if self.protocol is None:
            return None
        return resolve(self.protocol)(config or self.config())
