"""The leaderboard as one self-contained HTML page, drawn from the JSON document only.

The page must open offline in any browser, years later, from an e-mail or an artifact store: it
has no network references at all. Figures are inline SVG (:mod:`.plots`), CSS and the few lines of
sorting JavaScript are inline, and the markup comes from a Jinja2 template with autoescaping, so
that a suite's own text (its description, norm labels, failure reasons) cannot add markup.

Table cells are formatted by the Markdown renderer's helpers, so both files say the same thing;
each also carries a number to sort by. Keys that an older document lacks are treated as absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from . import cells, plots


def page(document: Mapping[str, Any]) -> str:
    """The page of a leaderboard document (what :func:`.render.document` returns, or its JSON)."""
    from jinja2 import Environment, PackageLoader

    suite = document["suite"]
    metric, direction = suite["metric"], suite["direction"]
    variants: Mapping[str, Sequence[Mapping[str, Any]]] = document.get("variants") or {}
    variant_axes = document.get("variant_axes") or {}
    colors = plots.palette(list(dict.fromkeys(r["norm"] for rows in variants.values() for r in rows)))
    sections = [_section(i, label, rows, document, colors) for i, (label, rows) in enumerate(variants.items())]
    axes = [(axis, _figure(plots.axis_plot(variants, variant_axes, axis, metric, direction, colors)))
            for axis in cells.numeric_axes(variant_axes)]
    across = document.get("across")
    environment = Environment(loader=PackageLoader("harness.leaderboard"), autoescape=True, trim_blocks=True,
                              lstrip_blocks=True)
    return environment.get_template("leaderboard.html.j2").render(
        document=document, suite=suite, colors=colors, sections=sections, axes=[a for a in axes if a[1]],
        across=across and {**across, "table": _across_table(across),
                           "cd": _figure(plots.cd_diagram(across["mean_rank"], across.get("posthoc"), colors)),
                           "profiles_svg": _figure(plots.profiles_plot(across.get("profiles"), colors))},
        arrow="higher is better" if direction == "max" else "lower is better",
        holm=any("p_holm" in (r.get("vs_baseline") or {}) for rows in variants.values() for r in rows))


def _section(i: int, label: str, rows: Sequence[Mapping[str, Any]], document: Mapping[str, Any],
             colors: Mapping[str, str]) -> dict[str, Any]:
    """What the template shows of one variant: its table, figures, oracle results, failures, search."""
    suite = document["suite"]
    oracle = sorted({m for r in rows for m in r.get("oracle_metrics") or []})
    search = (document.get("search") or {}).get(label) or []
    settings = (document.get("settings") or {}).get(label) or {}
    return {
        "id": f"variant-{i + 1}", "label": label, "axes": (document.get("variant_axes") or {}).get(label) or {},
        "engine": ", ".join(f"{k} {cells.option(v)}" for k, v in settings.items()),
        "table": _table(rows, suite["metric"], oracle, suite.get("baseline")),
        "oracle": oracle, "oracle_rows": [(r["norm"], [cells.mean_std((r.get("metrics") or {}).get(m)) for m in oracle])
                                          for r in rows if r.get("oracle_metrics")],
        "failed": [(r["norm"], f) for r in rows for f in r.get("failed") or []],
        "pending": [(r["norm"], r["pending"]) for r in rows if r.get("pending")],
        "search_states": {s: sum(t["state"] == s for t in search) for s in dict.fromkeys(t["state"] for t in search)},
        "search_stopped": [{**t, "params": cells.params(t.get("params") or {})} for t in search
                           if t["state"] in ("pruned", "fail")],
        "dots": _figure(plots.dot_plot(rows, suite["metric"], suite["direction"], colors)),
        "curves": _figure(plots.curves_plot(rows, colors)),
        "costs": _figure(plots.cost_plot(rows, suite["metric"], suite["direction"], colors)),
    }


def _figure(svg: str | None) -> Markup | None:
    """A figure to place as it is: our own SVG, of numbers and of text that matplotlib escaped."""
    return None if svg is None else Markup(svg)


def _cell(text: str, sort: float | None) -> dict[str, Any]:
    return {"text": text, "sort": "" if sort is None else f"{sort:.12g}"}


def _table(rows: Sequence[Mapping[str, Any]], metric: str, oracle: list[str], baseline: str | None) -> dict[str, Any]:
    """The Markdown table's columns, best rank first, each cell with its text and its sort key."""
    others = sorted({m for r in rows for m in r.get("metrics") or {}} - {metric} - set(oracle))
    header = ["rank", "norm", metric, "n", "95% CI", "Δ baseline [95% CI]", *others, *(c[1] for c in cells.COSTS),
              "failed"]
    body = []
    for order, row in sorted(enumerate(rows), key=lambda x: (x[1].get("rank") is None, x[1].get("rank") or 0)):
        c, ci = row.get("vs_baseline"), plots.mean_interval(row)
        metrics, costs = row.get("metrics") or {}, row.get("costs") or {}
        if c is None:
            delta = _cell("baseline" if row["norm"] == baseline and row.get("rank") is not None else "–",
                          0.0 if row["norm"] == baseline else None)
        else:
            significant = c.get("significant", c.get("p") is not None and c["p"] < 0.05)
            delta = _cell(cells.delta(c["diff"], c.get("low"), c.get("high"), significant), c["diff"])
        note = " ".join(filter(None, [cells.params(row.get("params") or {}),
                                      row.get("tuned") and "tuned: " + cells.params(row["tuned"])]))
        failed = str(len(row.get("failed") or [])) + (f" (+{row['pending']} pending)" if row.get("pending") else "")
        body.append({"norm": row["norm"], "note": note, "cells": [
            _cell(str(row.get("rank") or "–"), row.get("rank")), _cell(row["norm"], order),
            _cell(cells.mean_std(list((row.get("values") or {}).values())), row.get("mean")),
            _cell(str(row.get("n", 0)), row.get("n", 0)), _cell(cells.interval(ci), ci and ci[0]), delta,
            *[_cell(cells.fmt(cells.mean(metrics.get(m))), cells.mean(metrics.get(m))) for m in others],
            *[_cell(cells.fmt(cells.mean(costs.get(key)), digits), cells.mean(costs.get(key)))
              for key, _, digits in cells.COSTS],
            _cell(failed, len(row.get("failed") or [])),
        ]})
    return {"header": header, "rows": body, "norm_column": 1}


def _across_table(across: Mapping[str, Any]) -> dict[str, Any]:
    """Mean ranks, best first, with each norm's performance profile at the τ the document reads it."""
    at = (across.get("profiles") or {}).get("at") or {}
    header = ["norm", "mean rank", *(f"within τ ≤ {float(tau):g}" for tau in at)]
    rows = [{"norm": norm, "note": "", "cells": [
        _cell(norm, i), _cell(f"{across['mean_rank'][norm]:.2f}", across["mean_rank"][norm]),
        *[_cell(cells.fmt(fractions.get(norm), 3), fractions.get(norm)) for fractions in at.values()]]}
        for i, norm in enumerate(sorted(across["mean_rank"], key=across["mean_rank"].__getitem__))]
    return {"header": header, "rows": rows, "norm_column": 0}
