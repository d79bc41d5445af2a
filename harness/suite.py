"""A suite file (TOML) turned into a validated :class:`Suite`, or every problem with it.

The schema is pydantic, so types and unknown keys are checked by the library; the checks that
need the plugins (does the norm exist, does it fit the task) follow. Each problem names the
file, the key (``[[norm]]`` entries are counted from 1) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import Problem, UserError
from .norm import Norm, Param
from .plugins import Registry
from .task import Task, TaskConfig

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
    """``use``, an optional ``label`` (needed when one norm appears twice) and its parameters."""

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


@dataclass(frozen=True)
class Variant:
    """One point of the matrix: a fully validated task configuration."""

    label: str
    config: TaskConfig
    axes: dict[str, Any]


@dataclass(frozen=True)
class NormSpec:
    """One ``[[norm]]`` entry: which norm, under which label, with which parameters."""

    label: str
    norm: Norm
    params: dict[str, Any]
    index: int  # position in the file, counted from 1, for messages


@dataclass
class Suite:
    path: Path
    name: str
    version: int
    description: str
    seeds: list[int]
    metric: str
    direction: str
    baseline: str | None
    storage: str | None
    data_root: str | None
    task: Task
    variants: list[Variant]
    norms: list[NormSpec]
    excluded: set[tuple[str, str]]
    search: SearchSection | None
    digest: str  # hash of the file's content, for the leaderboard's provenance
    plugin_files: list[Path] = field(default_factory=list)

    def smoke(self, data_root: Path) -> Suite:
        """This suite scaled down to a quick end-to-end check under its own name: the first seed,
        each variant's ``smoke`` configuration, tiny data generated under ``data_root``, and the
        default storage (never the real one)."""
        variants = [Variant(v.label, v.config.smoke(data_root), v.axes) for v in self.variants]
        return dataclasses.replace(self, name=f"{self.name}-smoke", seeds=self.seeds[:1], variants=variants,
                                   storage=None, data_root=str(data_root))

    def missing_data(self, data_root: Path) -> list[Problem]:
        """A problem for every variant whose data is not under ``data_root``."""
        problems: dict[str, Problem] = {}  # variants reading the same data share one message
        for variant in self.variants:
            why = variant.config.missing_data(data_root)
            if why and why not in problems:
                problems[why] = Problem(str(self.path), "task.dataset", why)
        return list(problems.values())

    def runtime_problems(self) -> list[Problem]:
        """The checks each variant can only make with its run-time libraries imported."""
        found: dict[str, Problem] = {}
        for variant in self.variants:
            for why in variant.config.runtime_problems():
                found.setdefault(why, Problem(str(self.path), "task", why))
        return list(found.values())

    def pairs(self) -> list[tuple[Variant, NormSpec]]:
        """Every (variant, norm) the suite compares, exclusions removed."""
        return [
            (v, n) for v in self.variants for n in self.norms if (v.label, n.label) not in self.excluded
        ]


def load_suite(path: str | Path, registry: Registry) -> Suite:
    """Read, validate and resolve a suite file; raise :class:`UserError` listing every problem."""
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(Problem(shown, "", f"cannot read the suite file ({exc.strerror})")) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(Problem(shown, "", f"not valid TOML: {exc}")) from None
    try:
        parsed = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_problems(shown, exc)) from None
    return _Resolver(path, shown, parsed, registry, hashlib.sha256(text.encode()).hexdigest()).resolve()


class _Resolver:
    """The checks that need plugins: names exist, parameters are known, norm and task fit."""

    def __init__(self, path: Path, shown: str, parsed: SuiteFile, registry: Registry, digest: str):
        self.path, self.shown, self.parsed, self.registry, self.digest = path, shown, parsed, registry, digest
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.shown, key, message))

    def resolve(self) -> Suite:
        p = self.parsed
        plugin_files = self._load_plugin_files()
        task = self._lookup("task", p.task.use, "task.use", self.registry.tasks)
        if task is None:
            raise UserError(self.problems)
        variants = self._variants(task)
        norms = self._norms()
        if p.suite.metric not in task.metrics:
            self.problem("suite.metric", f"task {task.name!r} has no metric {p.suite.metric!r}; "
                         f"choose one of {sorted(task.metrics)}")
        labels = [n.label for n in norms]
        if p.suite.baseline is not None and norms and p.suite.baseline not in labels:
            self.problem("suite.baseline", f"{p.suite.baseline!r} is not one of the suite's norms {labels}")
        excluded = self._exclusions(variants, norms)
        for variant in variants:
            for spec in norms:
                if (variant.label, spec.label) not in excluded:
                    self._check_fit(task, variant, spec)
        self._check_search(task)
        if self.problems:
            raise UserError(self.problems)
        return Suite(
            path=self.path, name=p.suite.name, version=p.suite.version, description=p.suite.description,
            seeds=p.suite.seeds, metric=p.suite.metric, direction=task.metrics.get(p.suite.metric, "max"),
            baseline=p.suite.baseline, storage=p.suite.storage, data_root=p.suite.data_root, task=task,
            variants=variants, norms=norms, excluded=excluded, search=p.search, digest=self.digest,
            plugin_files=plugin_files,
        )

    def _load_plugin_files(self) -> list[Path]:
        files = []
        for i, name in enumerate(self.parsed.plugins):
            file = (self.path.parent / name).resolve()
            key = f"plugins[{i + 1}]"
            if not file.is_file():
                self.problem(key, f"plugin file {name!r} not found (looked for {file}); paths are "
                             "relative to the suite file")
                continue
            try:
                self.registry.load_file(file)
            except Exception as exc:  # noqa: BLE001 - report any import failure of user code
                self.problem(key, f"plugin file {name!r} failed to load: {type(exc).__name__}: {exc}")
                continue
            files.append(file)
        return files

    def _lookup(self, kind: str, name: str, key: str, known: dict[str, Any]) -> Any:
        conflict = self.registry.conflict(kind, name)
        if conflict:
            self.problem(key, f"{kind} {name!r} is registered twice, by {conflict.sources[0]} and by "
                         f"{conflict.sources[1]}; disable one with HARNESS_DISABLE_PLUGINS")
        if name in known:
            return known[name]
        if not conflict:
            self.problem(key, f"unknown {kind} {name!r}; available: {', '.join(sorted(known)) or 'none'} "
                         f"(`harness list {kind}s`; a plugin that failed to load is shown by `harness plugins`)")
        return None

    def _variants(self, task: Task) -> list[Variant]:
        base = self.parsed.task.model_dump(exclude={"use"})
        matrix = self.parsed.matrix
        variants = []
        for combo in itertools.product(*matrix.values()):
            axes = dict(zip(matrix, combo, strict=True))
            try:
                config = task.config.model_validate({**base, **axes})
            except ValidationError as exc:
                for err in exc.errors():
                    top = str(err["loc"][0]) if err["loc"] else ""
                    section = "matrix" if top in axes else "task"
                    self.problem(_key(section, err["loc"]), _message(err, task.config))
                return []
            label = _variant_label(axes, config)
            variants.append(Variant(label=label, config=config, axes=axes))
        return variants

    def _norms(self) -> list[NormSpec]:
        specs, seen = [], {}
        for i, entry in enumerate(self.parsed.norm):
            key = f"norm[{i + 1}]"
            norm = self._lookup("norm", entry.use, f"{key}.use", self.registry.norms)
            if norm is None:
                continue
            params = dict(entry.model_extra or {})
            known = norm.parameters()
            if known is not None:
                for name in params:
                    if name not in known:
                        self.problem(f"{key}.{name}", f"norm {norm.name!r} has no parameter {name!r}; "
                                     f"known: {', '.join(sorted(known)) or 'none'}")
                for name, value in params.items():
                    if name in known:
                        self._check_param(f"{key}.{name}", known[name], value)
            label = entry.label or entry.use
            if label in seen:
                self.problem(f"{key}.label", f"label {label!r} is already used by norm[{seen[label]}]; "
                             "give each entry of the same norm its own `label`")
            seen[label] = i + 1
            specs.append(NormSpec(label=label, norm=norm, params=params, index=i + 1))
        return specs

    def _check_param(self, key: str, param: Param, value: Any) -> None:
        if param.choices is not None and value not in param.choices:
            self.problem(key, f"{value!r} is not allowed; choose one of {list(param.choices)}")
        elif param.default is not None and not _same_kind(param.default, value):
            self.problem(key, f"expected {type(param.default).__name__} (like the default "
                         f"{param.default!r}), got {type(value).__name__} {value!r}")

    def _exclusions(self, variants: list[Variant], norms: list[NormSpec]) -> set[tuple[str, str]]:
        excluded = set()
        task_keys = set(self.parsed.task.model_dump(exclude={"use"})) | set(self.parsed.matrix)
        for i, rule in enumerate(self.parsed.exclude):
            unknown = set(rule) - task_keys - {"norm"}
            if unknown:
                self.problem(f"exclude[{i + 1}]", f"unknown keys {sorted(unknown)}; use 'norm' and the "
                             f"task keys {sorted(task_keys)}")
                continue
            for v in variants:
                for n in norms:
                    values = {"norm": n.label, **v.config.model_dump(), **v.axes}
                    if all(values.get(k) == want for k, want in rule.items()):
                        excluded.add((v.label, n.label))
        return excluded

    def _check_fit(self, task: Task, variant: Variant, spec: NormSpec) -> None:
        where = f"norm[{spec.index}].use"
        missing_dims = variant.config.norm_dims() - spec.norm.dims
        if missing_dims:
            self.problem(where, f"norm {spec.norm.name!r} does not support {'/'.join(sorted(missing_dims))} "
                         f"inputs, which task {task.name!r} ({variant.label}) puts norms on; supported: "
                         f"{sorted(spec.norm.dims)}. Add an [[exclude]] entry or choose another norm")
        provided = task.provides | variant.config.capabilities()
        missing = spec.norm.needs - provided
        if missing:
            self.problem(where, f"norm {spec.norm.name!r} needs {sorted(missing)}, which task {task.name!r} "
                         f"({variant.label}) does not provide (it provides {sorted(provided) or 'nothing'}); "
                         "change the task's settings or add an [[exclude]] entry")

    def _check_search(self, task: Task) -> None:
        search = self.parsed.search
        if search is None:
            return
        fields = task.config.model_fields
        for path in search.space:
            head, _, rest = path.partition(".")
            if head == "norm":
                continue  # a norm parameter, checked against each norm when the search runs
            if head not in fields:
                self.problem(f"search.space.{path}", f"{head!r} is not a key of task {task.name!r}; "
                             f"known: {', '.join(sorted(fields))}")
            elif rest:
                sub = fields[head].annotation
                if not (isinstance(sub, type) and issubclass(sub, BaseModel) and rest in sub.model_fields):
                    self.problem(f"search.space.{path}", f"{rest!r} is not a key of [task] {head}")


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _variant_label(axes: dict[str, Any], config: TaskConfig) -> str:
    if not axes:
        return config.variant_label()
    return ",".join(str(v) if k == "dataset" else f"{k}={v}" for k, v in axes.items())


def _key(section: str, loc: tuple[Any, ...]) -> str:
    key = section
    for part in loc:
        key += f"[{part + 1}]" if isinstance(part, int) else f".{part}"
    return key


def _message(err: Any, model: type[BaseModel] | None = None) -> str:
    if err["type"] == "extra_forbidden":
        allowed = f"; allowed: {', '.join(sorted(model.model_fields))}" if model else ""
        return f"unknown key (check the spelling){allowed}"
    if err["type"] == "missing":
        return "required key is missing"
    return f"{err['msg']} (got {json.dumps(err.get('input'), default=str)})"


_SECTIONS: dict[str, type[BaseModel]] = {"suite": SuiteSection, "search": SearchSection}


def _problems(shown: str, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) <= 1:  # a top-level key
            problems.append(Problem(shown, ".".join(map(str, loc)), _message(err, SuiteFile)))
            continue
        section = str(loc[0])
        model = _SECTIONS.get(section) if len(loc) == 2 else None
        problems.append(Problem(shown, _key(section, loc[1:]), _message(err, model)))
    return problems
