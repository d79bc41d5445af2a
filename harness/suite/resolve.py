"""A suite file (TOML) resolved against the plugins into a :class:`Suite`, or every problem
with it: the task and norms exist, the task's keys and each norm's parameters validate against
their config models, and each norm fits the task it is compared on."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import Problem, UserError, did_you_mean
from ..norm import Norm, NormConfig
from ..plugins import Registry
from ..task import Task, TaskConfig
from . import problems
from .schema import SearchSection, SuiteFile


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
    config: NormConfig
    index: int  # position in the file, counted from 1, for messages

    @property
    def params(self) -> dict[str, Any]:
        """The parameters the suite sets (the others are the config's defaults)."""
        return self.config.model_dump(mode="json", include=self.config.model_fields_set)


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
        search = self.search and self.search.model_copy(update={"trials": min(2, self.search.trials), "epochs": None})
        return dataclasses.replace(self, name=f"{self.name}-smoke", seeds=self.seeds[:1], variants=variants,
                                   storage=None, data_root=str(data_root), search=search)

    def missing_data(self, data_root: Path) -> list[Problem]:
        """A problem for every variant whose data is not under ``data_root``."""
        problems: dict[str, Problem] = {}  # variants reading the same data share one message
        for variant in self.variants:
            missing = variant.config.missing_data(data_root)
            if missing and missing[1] not in problems:
                problems[missing[1]] = Problem(str(self.path), f"task.{missing[0]}", missing[1])
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
    except UnicodeDecodeError as exc:
        raise UserError(Problem(shown, "", f"not a UTF-8 text file (byte {exc.start}: {exc.reason}); a suite is "
                                "TOML, which is UTF-8")) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(Problem(shown, "", f"not valid TOML: {exc}")) from None
    except RecursionError:
        raise UserError(Problem(shown, "", "arrays or tables nested too deeply to read")) from None
    try:
        parsed = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        raise UserError(problems.of_file(shown, exc)) from None
    return _Resolver(path, shown, parsed, registry, hashlib.sha256(text.encode()).hexdigest()).resolve()


class _Resolver:
    """The checks that need plugins: names exist, parameters are known, norm and task fit."""

    def __init__(self, path: Path, shown: str, parsed: SuiteFile, registry: Registry, digest: str):
        self.path, self.shown, self.parsed, self.registry, self.digest = path, shown, parsed, registry, digest
        self.found: list[Problem] = []

    def problem(self, key: str, message: str) -> None:
        self.found.append(Problem(self.shown, key, message))

    def resolve(self) -> Suite:
        p = self.parsed
        plugin_files = self._load_plugin_files()
        task = self._lookup("task", p.task.use, "task.use", self.registry.tasks)
        if task is None:
            raise UserError(self.found)
        unavailable = task.unavailable()
        if unavailable:
            self.problem("task.use", f"task {task.name!r} {unavailable}")
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
        self._check_search(variants, norms, excluded)
        if p.suite.data_root and (self.path.parent / p.suite.data_root).is_file():
            self.problem("suite.data_root", f"{p.suite.data_root!r} is a file; give the folder that holds the "
                         "datasets (relative to the suite file)")
        if self.found:
            raise UserError(self.found)
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
            key = f"plugins[{i + 1}]"
            try:
                file = (self.path.parent / name).resolve()
            except (OSError, RuntimeError) as exc:  # a symlink loop
                self.problem(key, f"plugin file {name!r} cannot be resolved: {exc}")
                continue
            if not file.is_file():
                self.problem(key, f"plugin file {name!r} not found (looked for {file}); paths are "
                             "relative to the suite file")
                continue
            try:
                self.registry.load_file(file)
            except BaseException as exc:  # noqa: BLE001 - user code may raise anything, SystemExit included
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
            self.problem(key, f"unknown {kind} {name!r}{did_you_mean(name, known)}; available: "
                         f"{', '.join(sorted(known)) or 'none'} (`harness list {kind}s`; a plugin that failed to "
                         "load is shown by `harness plugins`)")
        return None

    def _variants(self, task: Task) -> list[Variant]:
        base = self.parsed.task.model_dump(exclude={"use"})
        matrix = self.parsed.matrix
        variants = []
        for combo in itertools.product(*matrix.values()):
            axes = dict(zip(matrix, combo, strict=True))
            try:  # strictly, as TOML types them: a JSON round trip keeps arrays for tuples
                config = task.config.model_validate_json(json.dumps({**base, **axes}, default=str), strict=True)
            except ValidationError as exc:
                for err in exc.errors():
                    top = str(err["loc"][0]) if err["loc"] else ""
                    section = "matrix" if top in axes else "task"
                    self.problem(problems.key(section, err["loc"]), problems.message(err, task.config))
                return []
            label = ",".join(config.axis_label(k, v) for k, v in axes.items()) or config.variant_label()
            variants.append(Variant(label=label, config=config, axes=axes))
        return variants

    def _norms(self) -> list[NormSpec]:
        specs, seen = [], {}
        for i, entry in enumerate(self.parsed.norm):
            key = f"norm[{i + 1}]"
            norm = self._lookup("norm", entry.use, f"{key}.use", self.registry.norms)
            if norm is None:
                continue
            try:
                config = norm.config.model_validate(entry.model_extra or {})
            except ValidationError as exc:
                self.found += problems.of_model(self.shown, key, exc, norm.config)
                continue
            label = entry.label or entry.use
            if label in seen:
                self.problem(f"{key}.label", f"label {label!r} is already used by norm[{seen[label]}]; "
                             "give each entry of the same norm its own `label`")
            seen[label] = i + 1
            specs.append(NormSpec(label=label, norm=norm, config=config, index=i + 1))
        return specs

    def _exclusions(self, variants: list[Variant], norms: list[NormSpec]) -> set[tuple[str, str]]:
        excluded = set()
        task_keys = set(self.parsed.task.model_dump(exclude={"use"})) | set(self.parsed.matrix)
        for i, rule in enumerate(self.parsed.exclude):
            unknown = set(rule) - task_keys - {"norm"}
            if unknown:
                self.problem(f"exclude[{i + 1}]", f"unknown keys {sorted(unknown)}; use 'norm' and the "
                             f"task keys {sorted(task_keys)}")
                continue
            matched = {(v.label, n.label) for v in variants for n in norms
                       if all({"norm": n.label, **v.config.model_dump(), **v.axes}.get(k) == want
                              for k, want in rule.items())}
            if not matched and variants and len(norms) == len(self.parsed.norm):
                self.problem(f"exclude[{i + 1}]", f"matches no planned trial (norm labels: "
                             f"{', '.join(n.label for n in norms)}; variants: {', '.join(v.label for v in variants)}); "
                             "check its values or remove it")
            excluded |= matched
        if variants and norms and len(excluded) == len(variants) * len(norms):
            self.problem("exclude", "the [[exclude]] rules leave no trial to run")
        return excluded

    def _check_fit(self, task: Task, variant: Variant, spec: NormSpec) -> None:
        where = f"norm[{spec.index}].use"
        missing_dims = variant.config.norm_dims() - spec.norm.dims
        if missing_dims:
            self.problem(where, f"norm {spec.norm.name!r} does not support {'/'.join(sorted(missing_dims))} "
                         f"inputs, which task {task.name!r} ({variant.label}) puts norms on; supported: "
                         f"{sorted(spec.norm.dims)}. Add an [[exclude]] entry or choose another norm")
        provided = task.provides | variant.config.capabilities()
        missing = (spec.norm.needs | spec.config.needs()) - provided
        if missing:
            self.problem(where, f"norm {spec.norm.name!r} needs {sorted(missing)}, which task {task.name!r} "
                         f"({variant.label}) does not provide (it provides {sorted(provided) or 'nothing'}); "
                         "change the task's settings or add an [[exclude]] entry")

    def _check_search(self, variants: list[Variant], norms: list[NormSpec], excluded: set[tuple[str, str]]) -> None:
        """Every key of the space can be searched for every (variant, norm) pair that runs; a
        ``norm.*`` key must name a parameter of at least one of the suite's norms."""
        from ..space import SpaceErrors, norm_keys, resolve_space

        search = self.parsed.search
        if search is None:
            return
        for name in sorted(norm_keys(search.space) - {f for n in norms for f in type(n.config).model_fields}):
            self.problem(f"search.space.norm.{name}", f"no norm of this suite has a parameter {name!r}")
        reported: set[str] = set()
        for variant in variants:
            for spec in norms:
                if (variant.label, spec.label) in excluded:
                    continue
                try:
                    space = resolve_space(search.space, variant.config, spec.config, grid=search.sampler == "grid")
                except SpaceErrors as found:
                    for error in found.errors:
                        if error.key not in reported:  # once per key, for the first pair it fails for
                            reported.add(error.key)
                            self.problem(f"search.space.{error.key}", f"{error} (norm {spec.label!r}, {variant.label})")
                    continue
                if search.sampler != "grid":
                    continue
                points = math.prod(len(d.choices) for d in space.distributions.values())
                if search.trials > points and "search.trials" not in reported:
                    reported.add("search.trials")
                    self.problem("search.trials", f"the grid of norm {spec.label!r} has {points} point(s), fewer "
                                 f"than trials = {search.trials}; lower trials or add choices")
