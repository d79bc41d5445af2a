"""Storage -> board: per task variant, each norm's results over seeds, with its rank, its
interval and its difference to the baseline (:mod:`.stats`), its costs, curves, failures and the
tidy trial rows; across variants, the statistics of :func:`.stats.across`.

Only the final runs of the current plan are read, so the board always matches the suite file.
A board may be built from several sources (suites, or one suite's several storages): a variant
is the same in two sources when its task and label are, and its training configuration agrees;
a norm is the same when its label, norm and parameters are. The seeds of the same norm in the
same variant are pooled (the first source wins a seed both hold); whatever only shares a label
is told apart by its suite's name.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from optuna.trial import FrozenTrial, TrialState

from ..errors import Problem, UserError
from ..plan import StudyPlan
from ..storage import TrialBook
from ..suite import Suite
from . import cells
from .stats import Across, Comparison, across, compare, holm, interval, rank

COSTS = tuple(key for key, _, _ in cells.COSTS)


class Source(NamedTuple):
    """One suite's plan and the storage its trials are in."""

    suite: Suite
    plans: list[StudyPlan]
    book: TrialBook


@dataclass
class Row:
    norm: str
    norm_use: str
    params: dict[str, Any]
    values: dict[int, float]  # seed -> primary metric
    metrics: dict[str, list[float]]
    costs: dict[str, list[float]]
    failed: list[dict[str, Any]] = field(default_factory=list)
    oracle: set[str] = field(default_factory=set)  # metrics of protocols that use test labels
    pending: int = 0
    tuned: dict[str, Any] = field(default_factory=dict)  # the search's best setting, run by the finals
    curves: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # name -> seed -> per epoch
    rank: int | None = None
    vs_baseline: Comparison | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values.values()) if self.n > 1 else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return interval(list(self.values.values()))


@dataclass
class Board:
    suite: Suite  # a merged board's is the first source's, under the merged name and seeds
    variants: dict[str, list[Row]]
    trials: list[dict[str, Any]]
    env: dict[str, str]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> engine options
    axes: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> its matrix values
    search: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # variant -> tuning trials
    sources: list[Suite] = field(default_factory=list)
    across: Across | None = None

    @property
    def complete(self) -> bool:
        return all(r.pending == 0 for rows in self.variants.values() for r in rows)


@dataclass
class _Slot:
    """A norm in a variant while the sources are read: its plan and each seed's deciding trial."""

    plan: StudyPlan
    label: str
    seeds: set[int] = field(default_factory=set)
    trials: dict[int, FrozenTrial] = field(default_factory=dict)


def build(*sources: Source, name: str | None = None) -> Board:
    """The board of the sources with its statistics: ranks, Δ to the baseline, across variants."""
    board = read(*sources, name=name)
    direction = board.suite.direction
    for rows in board.variants.values():
        rank(rows, direction)
        baseline = next((r for r in rows if r.norm == board.suite.baseline), None)
        if baseline is not None:
            for row in rows:
                if row is not baseline:
                    row.vs_baseline = compare(row.values, baseline.values)
            holm([r.vs_baseline for r in rows])
    board.across = across({v: {r.norm: r.mean for r in rows if r.mean is not None}
                           for v, rows in board.variants.items()}, direction)
    return board


def read(*sources: Source, name: str | None = None) -> Board:
    """The results as stored, without statistics: what a progress display needs to count (scipy,
    statsmodels and scikit-posthocs are not imported)."""
    suite = _merged_suite(sources, name)
    slots: dict[str, dict[tuple[str, str, str], _Slot]] = {}
    variant_keys: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    board = Board(suite=suite, variants={}, trials=[], env={}, sources=[s.suite for s in sources])
    for source in sources:
        for plan in source.plans:
            label = _variant(plan, source.suite, variant_keys)
            board.settings.setdefault(label, plan.variant.config.engine_options())
            board.axes.setdefault(label, dict(plan.variant.axes))
            variant = slots.setdefault(label, {})
            key = (plan.norm.label, plan.norm.norm.name, json.dumps(plan.norm.params, sort_keys=True, default=str))
            if key not in variant:
                taken = any(k[0] == plan.norm.label for k in variant)
                variant[key] = _Slot(plan, f"{plan.norm.label} [{source.suite.name}]" if taken else plan.norm.label)
            slot = variant[key]
            slot.seeds.update(plan.seeds)
            for seed, trial in _final_trials(source.book.trials(plan), plan.seeds).items():
                slot.trials.setdefault(seed, trial)
            if plan.search is not None:
                board.search.setdefault(label, []).extend(
                    _search_trial(slot.label, t) for t in source.book.trials(plan, search=True))
    for label, variant in slots.items():
        board.variants[label] = [_row(slot, label, board) for slot in variant.values()]
    return board


def _merged_suite(sources: Iterable[Source], name: str | None) -> Suite:
    """The first source's suite, named and seeded for all; sources must agree on what is compared."""
    suites = [s.suite for s in sources]
    first = suites[0]
    problems = [Problem(str(s.path), f"suite.{key}", f"is {getattr(s, key)!r} but {getattr(first, key)!r} in "
                        f"{first.path}; a merged leaderboard compares one metric, in one direction")
                for s in suites[1:] for key in ("metric", "direction") if getattr(s, key) != getattr(first, key)]
    if problems:
        raise UserError(problems)
    if len(suites) == 1 and name is None:
        return first
    names = list(dict.fromkeys(s.name for s in suites))
    return dataclasses.replace(
        first, name=name or "+".join(names), seeds=sorted({seed for s in suites for seed in s.seeds}),
        description=first.description if len(names) == 1 else f"Merged from the suites {', '.join(names)}.")


def _variant(plan: StudyPlan, suite: Suite, seen: dict[tuple[str, str], tuple[str, dict[str, Any]]]) -> str:
    """The variant's label on the board: its own, unless an earlier source trained a variant of
    that task and label differently (then it is told apart by the suite's name)."""
    config = plan.variant.config
    training = config.model_dump(mode="json", include=set(config.training_keys))
    key = (suite.task.name, plan.variant.label)
    if key not in seen:
        seen[key] = (plan.variant.label, training)
    label, first = seen[key]
    if first == training:
        return label
    other = (suite.task.name, f"{plan.variant.label} [{suite.name}]")
    seen.setdefault(other, (other[1], training))
    return other[1]


def _row(slot: _Slot, variant: str, board: Board) -> Row:
    plan = slot.plan
    row = Row(norm=slot.label, norm_use=plan.norm.norm.name, params=plan.norm.params, values={}, metrics={}, costs={})
    for seed in sorted(slot.seeds):
        trial = slot.trials.get(seed)
        if trial is None or trial.state in (TrialState.WAITING, TrialState.RUNNING):
            row.pending += 1
            continue
        board.trials.append(_tidy(plan, variant, slot.label, seed, trial))
        if trial.state != TrialState.COMPLETE:
            row.failed.append({"seed": seed, "kind": trial.user_attrs.get("fail_kind", "worker-died"),
                               "reason": trial.user_attrs.get("fail_reason", "")})
            continue
        attrs = trial.user_attrs
        row.values[seed] = float(trial.value)
        row.tuned = attrs.get("params") or {}
        oracles = {name for name, info in (attrs.get("evaluations") or {}).items() if info.get("oracle")}
        for name, value in attrs.get("metrics", {}).items():
            row.metrics.setdefault(name, []).append(float(value))
            if name.split("/", 1)[0] in oracles and "/" in name:
                row.oracle.add(name)
        for name in COSTS:
            if name in attrs.get("cost", {}):
                row.costs.setdefault(name, []).append(float(attrs["cost"][name]))
        for name, values in (attrs.get("curves") or {}).items():
            row.curves.setdefault(name, {})[seed] = [float(v) for v in values]
        board.env = attrs.get("env", board.env)
    return row


def _final_trials(trials: Any, seeds: tuple[int, ...]) -> dict[int, FrozenTrial]:
    """Per seed, the trial that stands for it: a completed one, else the one in flight, else the last failure."""
    order = {TrialState.COMPLETE: 3, TrialState.RUNNING: 2, TrialState.WAITING: 2, TrialState.FAIL: 1}
    chosen: dict[int, FrozenTrial] = {}
    for trial in trials:
        seed = trial.user_attrs.get("seed")
        if seed not in seeds or trial.user_attrs.get("fail_kind") == "duplicate":
            continue
        best = chosen.get(seed)
        rank = (order.get(trial.state, 0), trial.number)
        if best is None or rank > (order.get(best.state, 0), best.number):
            chosen[seed] = trial
    return chosen


def _search_trial(norm: str, trial: FrozenTrial) -> dict[str, Any]:
    """A tuning trial as the leaderboard lists it: pruned and failed ones are shown, not hidden."""
    attrs = trial.user_attrs
    return {"norm": norm, "trial": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "params": attrs.get("params") or trial.params, "epoch": attrs.get("pruned_after_epoch"),
            "reason": attrs.get("fail_reason", "")}


def _tidy(plan: StudyPlan, variant: str, norm: str, seed: int, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    row = {
        "suite": plan.suite, "variant": variant, "norm": norm,
        "norm_use": plan.norm.norm.name, "norm_params": json.dumps(plan.norm.params, sort_keys=True),
        "seed": seed, "state": trial.state.name.lower(), "study": plan.name,
        "trial": trial.number, "tuned": json.dumps(attrs.get("params") or {}, sort_keys=True),
    }
    row.update({f"metric.{k}": v for k, v in attrs.get("metrics", {}).items()})
    row.update({f"cost.{k}": v for k, v in attrs.get("cost", {}).items()})
    row["fail_kind"] = attrs.get("fail_kind", "") if trial.state == TrialState.FAIL else ""
    row["fail_reason"] = attrs.get("fail_reason", "") if trial.state == TrialState.FAIL else ""
    row["resumed_from_epoch"] = attrs.get("resumed_from_epoch", 0)
    row["restarted"] = attrs.get("restarted", "")
    evaluations = attrs.get("evaluations") or {}
    row["oracle_evaluations"] = ",".join(sorted(n for n, info in evaluations.items() if info.get("oracle")))
    return row
