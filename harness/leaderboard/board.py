"""Storage -> board: per task variant, each norm's results over seeds, with its rank and its
difference to the baseline (:mod:`.stats`), its costs, failures and the tidy trial rows.

Only the final runs of the current plan are read, so the board always matches the suite file.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ..plan import StudyPlan
from ..storage import TrialBook
from ..suite import Suite
from .stats import Comparison, compare, rank

COSTS = ("train_seconds", "samples_per_second", "peak_memory_mb", "parameters")


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


@dataclass
class Board:
    suite: Suite
    variants: dict[str, list[Row]]
    trials: list[dict[str, Any]]
    env: dict[str, str]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> engine options

    @property
    def complete(self) -> bool:
        return all(r.pending == 0 for rows in self.variants.values() for r in rows)


def build(suite: Suite, plans: list[StudyPlan], book: TrialBook) -> Board:
    variants: dict[str, list[Row]] = {}
    tidy: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    settings: dict[str, dict[str, Any]] = {}
    for plan in plans:
        settings.setdefault(plan.variant.label, plan.variant.config.engine_options())
        row = Row(norm=plan.norm.label, norm_use=plan.norm.norm.name, params=plan.norm.params,
                  values={}, metrics={}, costs={})
        by_seed = _final_trials(book.trials(plan), plan.seeds)
        for seed in plan.seeds:
            trial = by_seed.get(seed)
            if trial is None or trial.state in (TrialState.WAITING, TrialState.RUNNING):
                row.pending += 1
                continue
            tidy.append(_tidy(plan, seed, trial))
            if trial.state != TrialState.COMPLETE:
                row.failed.append({"seed": seed, "kind": trial.user_attrs.get("fail_kind", "worker-died"),
                                   "reason": trial.user_attrs.get("fail_reason", "")})
                continue
            row.values[seed] = float(trial.value)
            row.tuned = trial.user_attrs.get("params") or {}
            evaluations = trial.user_attrs.get("evaluations") or {}
            oracles = {name for name, info in evaluations.items() if info.get("oracle")}
            for name, value in trial.user_attrs.get("metrics", {}).items():
                row.metrics.setdefault(name, []).append(float(value))
                if name.split("/", 1)[0] in oracles and "/" in name:
                    row.oracle.add(name)
            for name in COSTS:
                if name in trial.user_attrs.get("cost", {}):
                    row.costs.setdefault(name, []).append(float(trial.user_attrs["cost"][name]))
            env = trial.user_attrs.get("env", env)
        variants.setdefault(plan.variant.label, []).append(row)
    for rows in variants.values():
        rank(rows, suite.direction)
        baseline = next((r for r in rows if r.norm == suite.baseline), None)
        if baseline is not None:
            for row in rows:
                if row is not baseline:
                    row.vs_baseline = compare(row.values, baseline.values)
    return Board(suite=suite, variants=variants, trials=tidy, env=env, settings=settings)


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


def _tidy(plan: StudyPlan, seed: int, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    row = {
        "suite": plan.suite, "variant": plan.variant.label, "norm": plan.norm.label,
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


