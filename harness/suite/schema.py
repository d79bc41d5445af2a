"""The shape of a suite file, as pydantic models: types, required keys and unknown keys are the
library's checks. What needs the plugins (names, task and norm parameters) is
:mod:`harness.suite.resolve`'s."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteSection(_Strict):
    name: str = Field(pattern=SLUG, description="letters, digits, '_', '.', '-'")
    version: int = 1
    description: str = ""
    seeds: list[int] = Field(min_length=1)
    metric: str
    baseline: str | None = None
    storage: str | None = Field(None, description="an SQLAlchemy URL; default: a SQLite file under runs/")
    data_root: str | None = Field(None, description="where real datasets live; default: $HARNESS_DATA or data/")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds


class TaskSection(BaseModel):
    """``use`` plus the task's own keys, which the task's config model validates."""

    model_config = ConfigDict(extra="allow")
    use: str


class NormSection(BaseModel):
    """``use``, an optional ``label`` (needed when one norm appears twice) and its parameters,
    which the norm's config model validates."""

    model_config = ConfigDict(extra="allow")
    use: str
    label: str | None = Field(None, pattern=SLUG)


class SearchRange(_Strict):
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high, or choices")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class SearchSection(_Strict):
    trials: int = Field(ge=1)
    epochs: int | None = Field(None, ge=1)
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["none", "median", "hyperband"] = "median"
    space: dict[str, SearchRange] = {}


class SuiteFile(_Strict):
    plugins: list[str] = []
    suite: SuiteSection
    task: TaskSection
    matrix: dict[str, list[Any]] = {}
    norm: list[NormSection] = Field(min_length=1)
    exclude: list[dict[str, Any]] = []
    search: SearchSection | None = None

    @field_validator("matrix")
    @classmethod
    def _non_empty_axes(cls, matrix: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in matrix.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return matrix


#: The sections whose own keys a message lists when one is unknown.
SECTIONS: dict[str, type[BaseModel]] = {"suite": SuiteSection, "search": SearchSection}
