"""A board as files: ``<suite>.md`` for people, ``<suite>.csv`` (one tidy row per final trial) for
analysis, ``<suite>.json`` with versions and the suite's hash for provenance, and ``<suite>.html``,
the page drawn from that JSON document (:mod:`.page`)."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import write_together
from . import cells
from .board import Board, Row
from .stats import PROFILE_TAUS, Across

FORMATS = ("md", "csv", "json", "html")


def write(board: Board, directory: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the files as one set: a reader never sees one half-written, nor new and old files of
    a suite side by side."""
    doc = document(board)
    writers = {"md": lambda: markdown(board), "csv": lambda: tidy_csv(board), "json": lambda: _json_text(doc),
               "html": lambda: _page(doc)}
    return write_together(directory, {f"{board.suite.name}.{kind}": writers[kind]() for kind in formats})


def _page(doc: dict[str, Any]) -> str:
    from .page import page  # matplotlib and Jinja2 are imported for the page only

    return page(doc)


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
        "Mean ± standard deviation over seeds (n = completed seeds), and the 95% interval of the mean. Δ is the "
        "difference to the baseline with its 95% confidence interval (paired t over shared seeds, else Welch); "
        "* marks p < 0.05 after Holm's correction over the norms of the variant.",
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
            lines += ["Engine: " + ", ".join(f"{k} {cells.option(v)}" for k, v in board.settings[label].items()), ""]
        header = ["rank", "norm", f"{s.metric}", "n", "95% CI", "Δ baseline [95% CI]", *others,
                  *(title for _, title, _ in cells.COSTS), "failed"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in sorted(rows, key=lambda r: (r.rank is None, r.rank or 0)):
            std = f" ± {row.std:.4f}" if row.std is not None else ""
            line = [
                str(row.rank or "–"), f"`{row.norm}`" + (f" {row.params}" if row.params else "")
                + (" tuned: " + cells.params(row.tuned) if row.tuned else ""),
                "–" if row.mean is None else f"{row.mean:.4f}{std}", str(row.n),
                cells.interval(row.ci), _delta(row, s.baseline),
                *[cells.fmt(cells.mean(row.metrics.get(m))) for m in others],
                *[cells.fmt(cells.mean(row.costs.get(key)), digits) for key, _, digits in cells.COSTS],
                str(len(row.failed)) + (f" (+{row.pending} pending)" if row.pending else ""),
            ]
            lines.append("| " + " | ".join(line) + " |")
        lines.append("")
        if oracle:
            lines += ["Oracle protocols: they use the test labels (e.g. label-balanced test batches), so they are "
                      "not comparable with the table above.", "",
                      "| norm | " + " | ".join(oracle) + " |", "|---|" + "---|" * len(oracle)]
            for row in rows:
                if row.oracle:
                    shown = " | ".join(cells.mean_std(row.metrics.get(m)) for m in oracle)
                    lines.append(f"| `{row.norm}` | {shown} |")
            lines.append("")
        failures = [(r.norm, f) for r in rows for f in r.failed]
        if failures:
            lines += ["Failed trials:", ""]
            lines += [f"- `{norm}` seed {f['seed']}: {f['kind']}: {f['reason']}" for norm, f in failures]
            lines.append("")
        lines += _search_lines(board.search.get(label, []))
    lines += _axis_lines(board)
    if board.across is not None:
        lines += _across_lines(board.across, s.metric)
    if not board.complete:
        lines += ["_Some trials have not finished; run the suite again to complete it._", ""]
    if board.env:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in sorted(board.env.items())), ""]
    return "\n".join(lines)


def _axis_lines(board: Board) -> list[str]:
    """The primary metric against each numeric axis, a column per norm (with Δ to the baseline),
    one table per setting of the other axes: how a difference grows or shrinks along the axis."""
    s, lines = board.suite, []
    for axis in cells.numeric_axes(board.axes):
        groups: dict[str, dict[Any, list[Row]]] = {}
        for label, rows in board.variants.items():
            others = ", ".join(f"{k} {v}" for k, v in board.axes[label].items() if k != axis)
            groups.setdefault(others, {})[board.axes[label][axis]] = rows
        for others, by_value in groups.items():
            norms = list(dict.fromkeys(r.norm for rows in by_value.values() for r in rows))
            lines += [f"## {s.metric} by {axis}" + (f" ({others})" if others else ""), "",
                      f"| {axis} | " + " | ".join(f"`{n}`" for n in norms) + " |", "|---|" + "---|" * len(norms)]
            for value in sorted(by_value, reverse=True):
                shown = {r.norm: cells.mean_std(list(r.values.values()))
                         + (f" ({_delta(r, s.baseline)})" if r.vs_baseline else "") for r in by_value[value]}
                lines.append(f"| {value} | " + " | ".join(shown.get(n, "–") for n in norms) + " |")
            lines.append("")
    return lines


def _search_lines(trials: list[dict[str, Any]]) -> list[str]:
    """The tuning trials in one line, then each one that did not complete."""
    if not trials:
        return []
    states = {state: sum(t["state"] == state for t in trials) for state in dict.fromkeys(t["state"] for t in trials)}
    lines = ["Search trials: " + ", ".join(f"{n} {state}" for state, n in states.items()) + ".", ""]
    stopped = [t for t in trials if t["state"] in ("pruned", "fail")]
    lines += [f"- `{t['norm']}` search trial {t['trial']}: {t['state']}"
              + (f" after epoch {t['epoch']}" if t["epoch"] else "") + (f": {t['reason']}" if t["reason"] else "")
              + (f" ({cells.params(t['params'])})" if t["params"] else "") for t in stopped]
    return lines + ([""] if stopped else [])


def _across_lines(a: Across, metric: str) -> list[str]:
    """Mean ranks, Friedman's test with Nemenyi's critical difference, and performance profiles."""
    lines = ["## Across variants", "",
             f"Each variant is one block: {len(a.variants)} variants, {len(a.norms)} norms (rank 1 is the best "
             f"mean {metric}; ties share the average rank)."
             + (f" Left out, not measured in enough variants: {', '.join(f'`{n}`' for n in a.left_out)}."
                if a.left_out else ""), ""]
    if a.friedman is not None:
        lines += [f"Friedman χ² = {a.friedman['statistic']:.3g}, p = {a.friedman['p']:.3g}.", ""]
    taus = [f"{tau:.0%}" for tau in PROFILE_TAUS]
    header = ["norm", "mean rank", *(f"within {t}" for t in taus)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    profiles = a.profiles or {"at": {}}
    for norm in sorted(a.norms, key=a.mean_rank.__getitem__):
        at = [cells.fmt(profiles["at"].get(str(tau), {}).get(norm), 3) for tau in PROFILE_TAUS]
        lines.append(f"| `{norm}` | {a.mean_rank[norm]:.2f} | " + " | ".join(at) + " |")
    lines += ["", "\"within ≤ τ\": the fraction of variants where the norm's mean is within τ (relative) of the "
              "best norm's (a performance profile).", ""]
    if a.posthoc is not None:
        p = a.posthoc["p"]
        pairs = [f"`{x}`–`{y}` (p {p[x][y]:.3g})" for i, x in enumerate(a.norms) for y in a.norms[i + 1:]
                 if p[x][y] < a.posthoc["alpha"]]
        lines += [f"Nemenyi post-hoc: mean ranks further apart than the critical difference "
                  f"{a.posthoc['critical_difference']:.3g} differ at α = {a.posthoc['alpha']}: "
                  + ("; ".join(pairs) if pairs else "no pair does") + ".", ""]
    return lines


def _delta(row: Row, baseline: str | None) -> str:
    c = row.vs_baseline
    if c is None:
        return "baseline" if row.norm == baseline and row.rank is not None else "–"
    return cells.delta(c.diff, c.low, c.high, c.significant)


def tidy_csv(board: Board) -> str:
    columns: list[str] = []
    for trial in board.trials:
        columns += [k for k in trial if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(board.trials)
    return out.getvalue()


def document(board: Board) -> dict[str, Any]:
    """The board as plain data: the JSON file, and what the page is drawn from."""
    import optuna
    import pydantic

    from .. import __version__

    s = board.suite
    matrix: dict[str, list[Any]] = {}
    for axes in board.axes.values():
        for axis, value in axes.items():
            values = matrix.setdefault(axis, [])
            if value not in values:
                values.append(value)
    return {
        "suite": {"name": s.name, "version": s.version, "sha256": s.digest, "file": str(s.path),
                  "task": s.task.name, "metric": s.metric, "direction": s.direction, "baseline": s.baseline,
                  "seeds": s.seeds, "description": s.description, "matrix": matrix},
        "sources": [{"name": x.name, "version": x.version, "sha256": x.digest, "file": str(x.path)}
                    for x in board.sources],
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"harness": __version__, "optuna": optuna.__version__, "pydantic": pydantic.__version__},
        "environment": board.env,
        "settings": board.settings,
        "complete": board.complete,
        "variant_axes": board.axes,
        "variants": {
            label: [
                {**{k: v for k, v in asdict(row).items() if k not in ("vs_baseline", "oracle")},
                 "oracle_metrics": sorted(row.oracle),
                 "mean": row.mean, "std": row.std, "n": row.n, "ci": row.ci,
                 "vs_baseline": row.vs_baseline and {**asdict(row.vs_baseline),
                                                     "significant": row.vs_baseline.significant}}
                for row in rows
            ]
            for label, rows in board.variants.items()
        },
        "search": board.search,
        "across": board.across and asdict(board.across),
        "trials": board.trials,
    }


def as_json(board: Board) -> str:
    return _json_text(document(board))


def _json_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=str) + "\n"
