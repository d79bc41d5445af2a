"""The shape of a suite file, as pydantic models: types, required keys and unknown keys are the
library's checks. What needs the plugins (names, task and norm parameters) is
:mod:`harness.suite.resolve`'s."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: Names become file and directory names (runs/<suite>/, leaderboard/<suite>.json).
NAME_LENGTH = 100


class _Strict(BaseModel):
    """TOML has real types: a quoted number or a word for a boolean is refused, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class SuiteSection(_Strict):
    name: str = Field(pattern=SLUG, max_length=NAME_LENGTH, description="letters, digits, '_', '.', '-'")
    version: int = Field(1, ge=1)
    description: str = ""
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(min_length=1)
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

    @field_validator("storage")
    @classmethod
    def _a_known_database(cls, url: str | None) -> str | None:
        """A parseable SQLAlchemy URL of a dialect SQLAlchemy knows (its driver is checked at run)."""
        if url is None:
            return url
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(url).get_dialect()
        except NoSuchModuleError:  # before its base class, ArgumentError
            raise ValueError(f"unknown database dialect {make_url(url).drivername!r} (sqlite, postgresql, mysql, "
                             "…)") from None
        except ArgumentError:
            raise ValueError("not an SQLAlchemy URL (e.g. sqlite:///runs/x.db or postgresql://user@host/db)") from None
        except ImportError:
            return url  # a known dialect whose driver is not installed: `harness run` says so
        return url


class TaskSection(BaseModel):
    """``use`` plus the task's own keys, which the task's config model validates."""

    model_config = ConfigDict(extra="allow", strict=True)
    use: str


class NormSection(BaseModel):
    """``use``, an optional ``label`` (needed when one norm appears twice) and its parameters,
    which the norm's config model validates."""

    model_config = ConfigDict(extra="allow", strict=True)
    use: str
    label: str | None = Field(None, pattern=SLUG, max_length=NAME_LENGTH)


class SearchRange(_Strict):
    """A key's range: ``low``/``high`` (``log`` for a log scale), or ``choices``; ``{}`` for a
    norm parameter takes the range its norm declares."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if self.choices is not None and (self.low is not None or self.high is not None or self.log):
            raise ValueError("give either low and high, or choices")
        if (self.low is None) != (self.high is None):
            raise ValueError("give both low and high")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError("low must be below high")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class SearchSection(_Strict):
    trials: int = Field(ge=1, description="search trials per (task variant, norm)")
    epochs: int | None = Field(None, ge=1, description="epochs of a search trial (default: the task's)")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    seed: int = Field(0, ge=0, lt=2**32, description="seeds the sampler")
    pruner: Literal["none", "median", "hyperband"] = "median"
    space: dict[str, SearchRange] = Field(min_length=1)


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
            repeated = sorted({repr(v) for i, v in enumerate(values) if v in values[:i]})
            if repeated:
                raise ValueError(f"axis {key!r} repeats {', '.join(repeated)}: its trials would run twice")
        return matrix


#: The sections whose own keys a message lists when one is unknown.
SECTIONS: dict[str, type[BaseModel]] = {"suite": SuiteSection, "search": SearchSection}
