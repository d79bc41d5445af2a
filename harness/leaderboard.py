"""Storage -> leaderboard: per task variant, each norm's result over seeds, its rank, its
difference to the baseline with a 95% confidence interval, and its cost.

Only the final runs of the current plan are read, so the board always matches the suite file.
Files: ``<suite>.md`` for people, ``<suite>.csv`` (one tidy row per final trial) for analysis,
``<suite>.json`` with versions and the suite's hash for provenance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from .plan import StudyPlan
from .storage import TrialBook
from .suite import Suite

COSTS = ("train_seconds", "samples_per_second", "peak_memory_mb", "parameters")


@dataclass
class Comparison:
    """The difference of a norm's primary metric to the baseline's, over seeds."""

    diff: float
    low: float | None = None
    high: float | None = None
    p: float | None = None
    test: str = ""

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < 0.05


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
        _rank(rows, suite.direction)
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


def _rank(rows: list[Row], direction: str) -> None:
    scored = sorted((r for r in rows if r.mean is not None), key=lambda r: r.mean, reverse=direction == "max")
    rank = 0
    previous = None
    for i, row in enumerate(scored):
        if row.mean != previous:
            rank = i + 1
        row.rank, previous = rank, row.mean


def compare(values: dict[int, float], baseline: dict[int, float]) -> Comparison | None:
    """Mean difference to the baseline; paired over shared seeds, otherwise Welch's t-test."""
    from scipy import stats

    if not values or not baseline:
        return None
    diff = statistics.fmean(values.values()) - statistics.fmean(baseline.values())
    shared = sorted(set(values) & set(baseline))
    if len(shared) == len(values) == len(baseline) and len(shared) > 1:
        a, b = [values[s] for s in shared], [baseline[s] for s in shared]
        if len({x - y for x, y in zip(a, b, strict=True)}) == 1:  # identical differences: no spread
            return Comparison(diff, diff, diff, None, "paired t")
        result, test = stats.ttest_rel(a, b), "paired t"
    elif len(values) > 1 and len(baseline) > 1:
        result, test = stats.ttest_ind(list(values.values()), list(baseline.values()), equal_var=False), "Welch t"
    else:
        return Comparison(diff)
    ci = result.confidence_interval(0.95)
    p = float(result.pvalue)
    return Comparison(diff, float(ci.low), float(ci.high), None if math.isnan(p) else p, test)


def _tidy(plan: StudyPlan, seed: int, trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    row = {
        "suite": plan.suite, "variant": plan.variant.label, "norm": plan.norm.label,
        "norm_use": plan.norm.norm.name, "norm_params": json.dumps(plan.norm.params, sort_keys=True),
        "phase": plan.phase, "seed": seed, "state": trial.state.name.lower(), "study": plan.name,
        "trial": trial.number,
    }
    row.update({f"metric.{k}": v for k, v in attrs.get("metrics", {}).items()})
    row.update({f"cost.{k}": v for k, v in attrs.get("cost", {}).items()})
    row["fail_kind"] = attrs.get("fail_kind", "") if trial.state == TrialState.FAIL else ""
    row["fail_reason"] = attrs.get("fail_reason", "") if trial.state == TrialState.FAIL else ""
    row["resumed_from_epoch"] = attrs.get("resumed_from_epoch", 0)
    evaluations = attrs.get("evaluations") or {}
    row["oracle_evaluations"] = ",".join(sorted(n for n, info in evaluations.items() if info.get("oracle")))
    return row


# -- writing -----------------------------------------------------------------------------------
def write(board: Board, directory: Path) -> list[Path]:
    """Write the three files, each through a temporary file and a rename: never half-written."""
    directory.mkdir(parents=True, exist_ok=True)
    name = board.suite.name
    outputs = {f"{name}.md": markdown(board), f"{name}.csv": tidy_csv(board), f"{name}.json": as_json(board)}
    paths = []
    for filename, text in outputs.items():
        path = directory / filename
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _mean(values: list[float] | None) -> float | None:
    return statistics.fmean(values) if values else None


def _mean_std(values: list[float] | None) -> str:
    if not values:
        return "–"
    return f"{statistics.fmean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def markdown(board: Board) -> str:
    s = board.suite
    arrow = "higher is better" if s.direction == "max" else "lower is better"
    lines = [f"# Leaderboard: {s.name}", ""]
    if s.description:
        lines += [s.description, ""]
    lines += [
        f"Task `{s.task.name}`; primary metric **{s.metric}** ({arrow}); seeds {s.seeds}; "
        f"baseline `{s.baseline or 'none'}`. Suite version {s.version}, sha256 `{s.digest[:12]}`.",
        "",
        "Mean ± standard deviation over seeds (n = completed seeds). Δ is the difference to the baseline "
        "with its 95% confidence interval (paired t over shared seeds, else Welch); * marks p < 0.05.",
        "",
    ]
    for label, rows in board.variants.items():
        oracle = sorted({m for r in rows for m in r.oracle})
        others = sorted({m for r in rows for m in r.metrics} - {s.metric} - set(oracle))
        lines += [f"## {label}", ""]
        if label in board.settings:
            lines += ["Engine: " + ", ".join(f"{k} {_option(v)}" for k, v in board.settings[label].items()), ""]
        header = ["rank", "norm", f"{s.metric}", "n", "Δ baseline [95% CI]", *others,
                  "train s", "samples/s", "peak MB", "params", "failed"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in sorted(rows, key=lambda r: (r.rank is None, r.rank or 0)):
            std = f" ± {row.std:.4f}" if row.std is not None else ""
            cells = [
                str(row.rank or "–"), f"`{row.norm}`" + (f" {row.params}" if row.params else ""),
                "–" if row.mean is None else f"{row.mean:.4f}{std}", str(row.n), _delta(row),
                *[_fmt(_mean(row.metrics.get(m))) for m in others],
                _fmt(_mean(row.costs.get("train_seconds")), 3), _fmt(_mean(row.costs.get("samples_per_second")), 4),
                _fmt(_mean(row.costs.get("peak_memory_mb")), 4), _fmt(_mean(row.costs.get("parameters")), 6),
                str(len(row.failed)) + (f" (+{row.pending} pending)" if row.pending else ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if oracle:
            lines += ["Oracle protocols: they use the test labels (e.g. label-balanced test batches), so they are "
                      "not comparable with the table above.", "",
                      "| norm | " + " | ".join(oracle) + " |", "|---|" + "---|" * len(oracle)]
            for row in rows:
                if row.oracle:
                    cells = " | ".join(_mean_std(row.metrics.get(m)) for m in oracle)
                    lines.append(f"| `{row.norm}` | {cells} |")
            lines.append("")
        failures = [(r.norm, f) for r in rows for f in r.failed]
        if failures:
            lines += ["Failed trials:", ""]
            lines += [f"- `{norm}` seed {f['seed']}: {f['kind']}: {f['reason']}" for norm, f in failures]
            lines.append("")
    if not board.complete:
        lines += ["_Some trials have not finished; run the suite again to complete it._", ""]
    if board.env:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in sorted(board.env.items())), ""]
    return "\n".join(lines)


def _option(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _delta(row: Row) -> str:
    c = row.vs_baseline
    if c is None:
        return "baseline" if row.rank is not None else "–"
    text = f"{c.diff:+.3g}"
    if c.low is not None and c.high is not None:
        text += f" [{c.low:+.3g}, {c.high:+.3g}]"
    return text + ("*" if c.significant else "")


def tidy_csv(board: Board) -> str:
    columns: list[str] = []
    for trial in board.trials:
        columns += [k for k in trial if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(board.trials)
    return out.getvalue()


def as_json(board: Board) -> str:
    import optuna
    import pydantic

    from . import __version__

    s = board.suite
    data = {
        "suite": {"name": s.name, "version": s.version, "sha256": s.digest, "file": str(s.path),
                  "task": s.task.name, "metric": s.metric, "direction": s.direction, "baseline": s.baseline,
                  "seeds": s.seeds},
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"harness": __version__, "optuna": optuna.__version__, "pydantic": pydantic.__version__},
        "environment": board.env,
        "settings": board.settings,
        "complete": board.complete,
        "variants": {
            label: [
                {**{k: v for k, v in asdict(row).items() if k not in ("vs_baseline", "oracle")},
                 "oracle_metrics": sorted(row.oracle),
                 "mean": row.mean, "std": row.std, "n": row.n,
                 "vs_baseline": asdict(row.vs_baseline) if row.vs_baseline else None}
                for row in rows
            ]
            for label, rows in board.variants.items()
        },
        "trials": board.trials,
    }
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
