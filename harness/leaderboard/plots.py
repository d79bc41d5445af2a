"""The leaderboard page's figures, each one inline SVG made from plain data of the document.

Every function draws on a :class:`matplotlib.figure.Figure` of its own and renders it with the
SVG canvas, never through pyplot's state or a GUI backend, so it works in any process (a worker,
a headless server); the style is applied with ``rc_context`` for the duration of one figure.
The output is deterministic (no date, fixed hash salt, text kept as text) and fit to sit inside
an HTML page: no XML prolog, no namespaces or metadata (whose URLs would look like network
references), ``href`` instead of ``xlink:href``, and the ids it references prefixed with a digest
of the figure so that two figures of one page cannot collide. A function returns ``None`` when
its data is missing (an old document, a run without curves), and the page leaves it out.

matplotlib is imported inside the functions: importing the leaderboard must stay cheap for the CLI.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import cells

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Rows = Sequence[Mapping[str, Any]]
Colors = Mapping[str, str]

#: one colour per norm, the same on every figure of a page (matplotlib's tab10, then tab20)
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
         "#bcbd22", "#17becf")
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "normbench", "font.size": 8, "axes.titlesize": 8,
         "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "grid.linewidth": 0.5}
ORACLE = "#a0522d"  # the colour of oracle labels (the page's CSS too): results that used the test labels
COST_AXES = {"train_seconds": "train seconds", "peak_memory_mb": "peak memory (MB)"}


def palette(norms: Sequence[str]) -> dict[str, str]:
    """A colour per norm label, in the given order (tab20's pairs beyond ten norms)."""
    if len(norms) <= len(TAB10):
        return dict(zip(norms, TAB10, strict=False))
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    return {norm: to_hex(cmap(i % 20)) for i, norm in enumerate(norms)}


def _figure_svg(draw: Callable[..., Figure | None]) -> Callable[..., str | None]:
    """Run ``draw`` under the page's style and render the figure it returns to inline SVG."""

    @functools.wraps(draw)
    def render(*args: Any, **kwargs: Any) -> str | None:
        import matplotlib
        from matplotlib.backends.backend_svg import FigureCanvasSVG

        with matplotlib.rc_context(STYLE):
            figure = draw(*args, **kwargs)
            if figure is None:
                return None
            out = io.StringIO()
            FigureCanvasSVG(figure).print_svg(out, metadata=dict.fromkeys(("Date", "Creator", "Format", "Type")))
        return _inline(out.getvalue())

    return render


def _inline(svg: str) -> str:
    """matplotlib's standalone SVG document as an element for an HTML page (see the module doc)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg).replace("xlink:href=", "href=")
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:8]
    used = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))
    svg = re.sub(r' id="([^"]+)"', lambda m: f' id="{prefix}-{m[1]}"' if m[1] in used else "", svg)
    return re.sub(r'(href="#|url\(#)([^")]+)', lambda m: f"{m[1]}{prefix}-{m[2]}", svg).strip()


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _label(metric: str, direction: str) -> str:
    return f"{metric} ({'higher' if direction == 'max' else 'lower'} is better)"


def mean_interval(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """The row's 95% interval of the mean, when the document has one."""
    ci = row.get("ci")
    return (ci[0], ci[1]) if ci and None not in ci else None


@_figure_svg
def dot_plot(rows: Rows, metric: str, direction: str, colors: Colors) -> Figure | None:
    """Each norm's primary metric: its seeds as faint dots, the mean, and the 95% interval of the
    mean (the document's ``ci``). Oracle metrics (they use the test labels) get panels of their own,
    titled as such, so that they are never read against the others."""
    rows = [r for r in rows if r.get("values")]
    if not rows:
        return None
    oracle = sorted({m for r in rows for m in r.get("oracle_metrics") or []})
    figure = _new_figure(4.2 + 2.6 * len(oracle), 1.0 + 0.24 * len(rows))
    axes = figure.subplots(1, 1 + len(oracle), sharey=True, squeeze=False)[0]
    norms = [r["norm"] for r in rows][::-1]  # the first norm at the top
    for ax, name in zip(axes, [metric, *oracle], strict=True):
        for y, row in enumerate(reversed(rows)):
            values = list(row["values"].values()) if name == metric else (row.get("metrics") or {}).get(name) or []
            color = colors[row["norm"]]
            ax.scatter(values, [y] * len(values), s=10, color=color, alpha=0.35, linewidths=0)
            if values:
                ax.plot([statistics.fmean(values)], [y], "o", color=color, markersize=5)
            ci = mean_interval(row) if name == metric else None
            if ci:
                ax.plot(ci, [y, y], color=color, linewidth=1.6)
        interval = " and 95% CI" if any(map(mean_interval, rows)) else ""
        ax.set_title(f"oracle: {name}\n(uses test labels)" if name != metric else f"seeds, mean{interval}",
                     color=ORACLE if name != metric else "black")
        ax.set_xlabel(_label(name, direction) if name == metric else name)
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(range(len(norms)), norms)
    axes[0].set_ylim(-0.6, len(norms) - 0.4)
    return figure


def _curve_stats(by_seed: Mapping[str, Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean, min and max over seeds at each step (seeds that stopped early count where they ran)."""
    length = max(len(v) for v in by_seed.values())
    columns = [[v[i] for v in by_seed.values() if i < len(v) and v[i] is not None and math.isfinite(v[i])]
               for i in range(length)]
    return ([statistics.fmean(c) if c else math.nan for c in columns],
            [min(c, default=math.nan) for c in columns], [max(c, default=math.nan) for c in columns])


@_figure_svg
def curves_plot(rows: Rows, colors: Colors) -> Figure | None:
    """Small multiples of the stored curves (``train_loss`` per epoch, every ``val_*`` per
    validation at its ``val_epoch``): per norm the mean over seeds and its min–max band. Curves of
    oracle metrics are titled as such."""
    names = sorted({c for r in rows for c in r.get("curves") or {} if c == "train_loss" or c.startswith("val_")}
                   - {"val_epoch"}, key=lambda c: (c != "train_loss", c))
    if not names:
        return None
    from matplotlib.ticker import MaxNLocator

    oracles = {m for r in rows for m in r.get("oracle_metrics") or []}
    columns = min(3, len(names))
    lines = math.ceil(len(names) / columns)
    figure = _new_figure(2.7 * columns, 2.0 * lines + 0.35)
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for row in rows:
            by_seed = {s: v for s, v in ((row.get("curves") or {}).get(name) or {}).items() if v}
            if not by_seed:
                continue
            mean, low, high = _curve_stats(by_seed)
            epochs = (row["curves"].get("val_epoch") or {}) if name != "train_loss" else {}
            x = max(epochs.values(), key=len, default=[])
            x = list(x[: len(mean)]) if len(x) >= len(mean) else list(range(1, len(mean) + 1))
            color = colors[row["norm"]]
            if len(x) < 4:  # a validation or two (val_interval = epochs): points with their min–max bars
                ax.errorbar(x, mean, yerr=[[m - lo for m, lo in zip(mean, low, strict=True)],
                                           [hi - m for m, hi in zip(mean, high, strict=True)]],
                            fmt="o-", color=color, markersize=3, linewidth=1.2, capsize=2, label=row["norm"])
                continue
            ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
            ax.plot(x, mean, color=color, linewidth=1.2, label=row["norm"])
        oracle = name.removeprefix("val_") in oracles
        ax.set_title(f"{name} (oracle: uses test labels)" if oracle else name, color=ORACLE if oracle else "black")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for ax in axes[len(names):]:
        ax.set_visible(False)
    _legend(figure)
    return figure


def _legend(figure: Figure) -> None:
    """One legend under the figure for the labels of all its panels (a norm may miss in some)."""
    entries: dict[str, Any] = {}
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        widest = 0.35 + 0.055 * max(map(len, entries))  # inches: the marker and 7-pt text
        columns = max(1, min(len(entries), 6, int(figure.get_figwidth() / widest)))  # as wide as the figure
        figure.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=columns,
                      frameon=False)


def pareto_front(points: Sequence[tuple[float, float]], direction: str) -> list[int]:
    """Indices of the points (cost, metric) that no other point beats on both: cheaper or as cheap,
    and better or as good. Ordered by cost."""
    sign = 1 if direction == "max" else -1
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or sign * points[i][1] > sign * points[front[-1]][1]:
            front.append(i)
    return front


@_figure_svg
def cost_plot(rows: Rows, metric: str, direction: str, colors: Colors) -> Figure | None:
    """The primary metric against each cost (train seconds, peak memory), one point per norm (means
    over seeds), with the Pareto front: the norms that no other is both cheaper and better than."""
    panels = {}
    for cost in COST_AXES:
        points = [(r["norm"], cells.mean(r.get("costs", {}).get(cost)), r.get("mean")) for r in rows]
        points = [(n, c, m) for n, c, m in points if c is not None and m is not None]
        if points and any(c > 0 for _, c, _ in points):
            panels[cost] = points
    if not panels:
        return None
    figure = _new_figure(3.3 * len(panels), 2.6)
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (cost, points) in zip(axes, panels.items(), strict=True):
        front = pareto_front([(c, m) for _, c, m in points], direction)
        ax.step([points[i][1] for i in front], [points[i][2] for i in front], where="post", color="#555",
                linewidth=0.9, linestyle="--", label="Pareto front", zorder=1)
        ax.scatter([points[i][1] for i in front], [points[i][2] for i in front], s=70, facecolors="none",
                   edgecolors="#333", linewidths=0.9, zorder=2)
        for norm, c, m in points:
            ax.scatter([c], [m], s=22, color=colors[norm], label=norm, zorder=3)
        ax.set_xlabel(COST_AXES[cost])
    axes[0].set_ylabel(_label(metric, direction))
    _legend(figure)
    return figure


@_figure_svg
def axis_plot(variants: Mapping[str, Rows], variant_axes: Mapping[str, Mapping[str, Any]], axis: str,
              metric: str, direction: str, colors: Colors) -> Figure | None:
    """The primary metric against one numeric matrix axis (batch size, labelled fraction), a line
    per norm with its 95% interval, as in the UBN paper's Figure 6. Variants that differ in other
    axes go to panels of their own; the x axis is logarithmic when the values span over 10×."""
    panels: dict[str, dict[str, list[tuple[float, float, Any]]]] = {}
    for label, rows in variants.items():
        axes = variant_axes.get(label) or {}
        if axis not in axes:
            continue
        title = ", ".join(f"{k} = {v}" for k, v in axes.items() if k != axis)
        for row in rows:
            if row.get("mean") is not None:
                point = (axes[axis], row["mean"], mean_interval(row))
                panels.setdefault(title, {}).setdefault(row["norm"], []).append(point)
    if not panels:
        return None
    xs = [x for lines in panels.values() for points in lines.values() for x, _, _ in points]
    columns = min(3, len(panels))
    figure = _new_figure(3.4 * columns, 2.5 * math.ceil(len(panels) / columns) + 0.35)
    axes_list = figure.subplots(math.ceil(len(panels) / columns), columns, squeeze=False, sharey=True).ravel()
    for ax, (title, lines) in zip(axes_list, sorted(panels.items()), strict=False):
        for norm, points in lines.items():
            points.sort(key=lambda p: p[0])
            x, y = [p[0] for p in points], [p[1] for p in points]
            errors = [[m - ci[0] if ci else 0 for _, m, ci in points], [ci[1] - m if ci else 0 for _, m, ci in points]]
            ax.errorbar(x, y, yerr=errors, fmt="o-", color=colors[norm], markersize=3.5, linewidth=1.2,
                        elinewidth=0.8, capsize=2, label=norm)
        if min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
            ax.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])
            ax.minorticks_off()
        ax.set_title(title)
        ax.set_xlabel(axis)
    for ax in axes_list[len(panels):]:
        ax.set_visible(False)
    axes_list[0].set_ylabel(_label(metric, direction))
    _legend(figure)
    return figure


@_figure_svg
def cd_diagram(mean_rank: Mapping[str, float], posthoc: Mapping[str, Any] | None, colors: Colors) -> Figure | None:
    """Demšar's critical-difference diagram: mean ranks over variants (1 = best) on one axis, bars
    joining norms the post-hoc test does not tell apart (scikit-posthocs draws it)."""
    if not posthoc or not posthoc.get("p") or len(mean_rank) < 2:
        return None
    import pandas as pd
    import scikit_posthocs as sp

    norms = list(mean_rank)
    p = pd.DataFrame(posthoc["p"]).reindex(index=norms, columns=norms).astype(float)
    for norm in norms:
        p.loc[norm, norm] = 1.0
    cd = posthoc.get("critical_difference")
    figure = _new_figure(6.4, 1.3 + 0.22 * len(norms))
    ax = figure.subplots()
    sp.critical_difference_diagram(dict(mean_rank), p, ax=ax, alpha=posthoc.get("alpha", 0.05),
                                   color_palette=dict(colors), label_props={"fontsize": 7},
                                   marker_props={"s": 18}, text_h_margin=0.03)
    if cd:  # drawn here, from rank 1 and above the tick labels (scikit-posthocs puts it on them)
        ax.plot([1, 1 + cd], [1.0, 1.0], color="black", linewidth=1.5)
        ax.text(1 + cd / 2, 1.15, f"CD = {cd:.3g}", ha="center", va="bottom", fontsize=7)
    # The rank axis spans every possible mean rank: 1 to the number of norms.
    ax.set_xlim(0.8, max(len(norms), 1 + (cd or 0)) + 0.2)
    ax.set_xticks(range(1, len(norms) + 1))
    ax.set_ylim(ax.get_ylim()[0] - 0.3, 1.6)
    ax.grid(False)
    ax.set_title(f"mean rank (1 = best); bars join norms not significantly different "
                 f"({posthoc.get('test', 'post-hoc')}, α = {posthoc.get('alpha', 0.05):g})", pad=18)
    return figure


@_figure_svg
def profiles_plot(profiles: Mapping[str, Any] | None, colors: Colors) -> Figure | None:
    """Performance profiles: per norm, the fraction of variants in which it is within τ of the
    best norm (a step function of τ; higher and further left is better)."""
    if not profiles or not profiles.get("taus") or not profiles.get("fractions"):
        return None
    taus = list(profiles["taus"])
    taus.append(taus[-1] + 0.05 * ((taus[-1] - taus[0]) or 0.2))  # the last step runs on a little, to be seen
    figure = _new_figure(4.8, 2.8)
    ax = figure.subplots()
    for norm, fractions in profiles["fractions"].items():
        ax.step(taus, [*fractions, fractions[-1]], where="post", color=colors[norm], linewidth=1.3, label=norm)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("τ")
    ax.set_ylabel("fraction of variants")
    ax.legend(loc="lower right", frameon=False)
    return figure
