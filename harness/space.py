"""A suite's ``[search]`` space for one (task variant, norm): Optuna distributions over dotted task
keys (``optimizer.lr``) and the norm's parameters (``norm.momentum``), and a sampled point
turned back into the trial's configs.

Each key's type and limits are those of the config model that holds it: a range is checked by
validating its ends there (``optimizer.lr`` low 0 is refused by the same rule as ``lr = 0``),
and so is every sampled value. A ``norm.*`` key applies to each norm that has that parameter;
written without a range (``"norm.momentum" = {}``) it takes the range the norm declares
(:class:`~harness.norm.Search` on its config field).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ValidationError

from .errors import did_you_mean
from .norm import NormConfig, Search
from .task import TaskConfig

NORM = "norm."


class SpaceError(ValueError):
    """A space key that cannot be searched; ``key`` is the key as the suite writes it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class SpaceErrors(ValueError):
    """Every key of a space that cannot be searched."""

    def __init__(self, errors: list[SpaceError]) -> None:
        super().__init__("; ".join(f"{e.key}: {e}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Space:
    """The distributions of one (task variant, norm), keyed as the suite writes them."""

    distributions: dict[str, BaseDistribution]

    def describe(self) -> str:
        """``key in [low, high] (log)`` or ``key in {choices}``, comma-separated."""
        parts = []
        for key, found in self.distributions.items():
            if isinstance(found, CategoricalDistribution):
                parts.append(f"{key} in {{{', '.join(map(repr, found.choices))}}}")
            else:
                parts.append(f"{key} in [{found.low:g}, {found.high:g}]" + (" log" if found.log else ""))
        return ", ".join(parts)

    def configs(self, params: dict[str, Any], task: TaskConfig, norm: NormConfig) -> tuple[TaskConfig, NormConfig]:
        """The trial's task and norm configs with the sampled ``params`` set, validated."""
        task_values = {k: v for k, v in params.items() if not k.startswith(NORM)}
        norm_values = {k.removeprefix(NORM): v for k, v in params.items() if k.startswith(NORM)}
        return with_values(task, task_values), with_values(norm, norm_values)


def resolve_space(space: dict[str, Any], task: TaskConfig, norm: NormConfig, grid: bool = False) -> Space:
    """The distributions of ``space`` (the suite's ``[search] space``: key -> SearchRange) for this
    task config and norm config. ``norm.*`` keys the norm does not have are left out. Raises
    :class:`SpaceErrors` naming every key that cannot be searched; ``grid`` needs choices."""
    distributions: dict[str, BaseDistribution] = {}
    errors: list[SpaceError] = []
    for key, given in space.items():
        try:
            found = _distribution(key, given, task, norm, grid)
        except SpaceError as error:
            errors.append(error)
            continue
        if found is not None:
            distributions[key] = found
    if errors:
        raise SpaceErrors(errors)
    return Space(distributions)


def _distribution(key: str, given: Any, task: TaskConfig, norm: NormConfig, grid: bool) -> BaseDistribution | None:
    is_norm = key.startswith(NORM)
    path = key.removeprefix(NORM) if is_norm else key
    if is_norm and path not in type(norm).model_fields:
        return None
    owner: BaseModel = norm if is_norm else task
    annotation = _annotation(owner, path, key)
    low, high, log, choices = given.low, given.high, given.log, given.choices
    if choices is None and low is None:  # no range given: the norm's declared one
        declared = norm.search_space().get(path) if is_norm else None
        if declared is None:
            raise SpaceError(key, "give low and high, or choices" + (
                f" (norm config {type(norm).__name__} declares no search range for {path!r})" if is_norm else ""))
        low, high, log, choices = ((declared.low, declared.high, declared.log, None) if isinstance(declared, Search)
                                   else (None, None, False, list(declared)))
    if grid and choices is None:
        raise SpaceError(key, "the grid sampler needs choices = [...] for every key")
    if choices is not None:
        for choice in choices:
            _check(owner, path, choice, key)
        return CategoricalDistribution(list(choices))
    if annotation not in (int, float):
        raise SpaceError(key, f"{path!r} is not a number; give choices = [...]")
    if annotation is int and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(key, f"{path!r} is an integer; give integer low and high (got {low} and {high})")
    for end in (low, high):
        _check(owner, path, annotation(end), key)
    return (IntDistribution(int(low), int(high), log=log) if annotation is int
            else FloatDistribution(float(low), float(high), log=log))


def norm_keys(space: dict[str, Any]) -> set[str]:
    """The norm parameters a space names (without the ``norm.`` prefix)."""
    return {key.removeprefix(NORM) for key in space if key.startswith(NORM)}


def _annotation(model: BaseModel, path: str, key: str) -> Any:
    """The type of the field at a dotted ``path`` of ``model`` (Optional unwrapped)."""
    head, _, rest = path.partition(".")
    fields = type(model).model_fields
    if head not in fields:
        raise SpaceError(key, f"{head!r} is not a key of {type(model).__name__}{did_you_mean(head, fields)}")
    if rest:
        inner = getattr(model, head)
        if not isinstance(inner, BaseModel):
            raise SpaceError(key, f"{head!r} has no keys")
        return _annotation(inner, rest, key)
    annotation = fields[head].annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # `float | None`: float
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def with_values(model: Any, values: dict[str, Any]) -> Any:
    """``model`` (a config) with the values at dotted paths set, validated by its class."""
    data = model.model_dump()
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return type(model).model_validate(data)


def _check(model: BaseModel, path: str, value: Any, key: str) -> None:
    try:
        with_values(model, {path: value})
    except ValidationError as error:
        reason = error.errors()[0]["msg"]
        raise SpaceError(key, f"{value!r} is not a valid {path!r}: {reason}") from None
