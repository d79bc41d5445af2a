"""A board as files: ``<suite>.md`` for people, ``<suite>.csv`` (one tidy row per final trial) for
analysis, ``<suite>.json`` with versions and the suite's hash for provenance."""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import write_together
from .board import Board, Row


def write(board: Board, directory: Path) -> list[Path]:
    """Write the three files as one set: a reader never sees one half-written, nor new and old
    files of a suite side by side."""
    name = board.suite.name
    return write_together(directory, {f"{name}.md": markdown(board), f"{name}.csv": tidy_csv(board),
                                      f"{name}.json": as_json(board)})


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
    if s.description:  # the suite's own text: escaped, so that it cannot add markup to the page
        lines += [html.escape(s.description), ""]
    lines += [
        f"Task `{s.task.name}`; primary metric **{s.metric}** ({arrow}); seeds {s.seeds}; "
        f"baseline `{s.baseline or 'none'}`. Suite version {s.version}, sha256 `{s.digest[:12]}`.",
        "",
        "Mean ± standard deviation over seeds (n = completed seeds). Δ is the difference to the baseline "
        "with its 95% confidence interval (paired t over shared seeds, else Welch); * marks p < 0.05.",
        "",
    ]
    if s.search is not None:
        lines += [f"Each norm was tuned first: {s.search.trials} {s.search.sampler} search trial(s) on the validation "
                  f"split ({s.search.pruner} pruner); every seed then ran the best setting (`tuned`).", ""]
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
                str(row.rank or "–"), f"`{row.norm}`" + (f" {row.params}" if row.params else "")
                + (" tuned: " + ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in row.tuned.items())
                   if row.tuned else ""),
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

    from .. import __version__

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
