"""The leaderboard's HTML page: its figures, its markup, and the page itself in headless Chromium.

The page is drawn from a hand-built document (two batch-size variants, three norms, three seeds,
curves, an oracle metric, a failed trial, a pruned search trial, statistics across variants), so
these tests need no training. The browser test uses the distribution's Chromium and chromedriver
(``bash scripts/install_browser.sh``) and skips, saying so, where they are missing. With
``HARNESS_SCREENSHOT_DIR`` set, it leaves its screenshot there for a person to look at.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from harness.leaderboard import across, cells, page, plots

NORMS = ("batchnorm", "groupnorm", "layernorm")
SEEDS = (0, 1, 2)
BATCH_SIZES = (16, 256)
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def _row(norm: str, skill: float, batch_size: int) -> dict[str, Any]:
    """A norm's row: accuracy that depends on the norm and, for batchnorm, on the batch size."""
    base = skill + (0.05 * math.log10(batch_size / 16) if norm == "batchnorm" else 0.0)
    values = {str(s): round(base + 0.01 * (s - 1) * (1 + NORMS.index(norm)), 4) for s in SEEDS}
    mean, std = statistics.fmean(values.values()), statistics.stdev(values.values())
    epochs = [2, 4, 6]
    return {
        "norm": norm, "norm_use": norm, "params": {"groups": 4} if norm == "groupnorm" else {}, "tuned": {},
        "values": values, "n": len(values), "mean": mean, "std": std, "ci": [mean - 2.5 * std, mean + 2.5 * std],
        "rank": None, "vs_baseline": None,
        "metrics": {"accuracy": list(values.values()), "nll": [1 - v for v in values.values()],
                    **({"balanced/accuracy": [v + 0.02 for v in values.values()]} if norm == "batchnorm" else {})},
        "oracle_metrics": ["balanced/accuracy"] if norm == "batchnorm" else [],
        "costs": {"train_seconds": [10.0 + 5 * NORMS.index(norm)] * 3, "samples_per_second": [500.0] * 3,
                  "peak_memory_mb": [100.0 + 20 * (2 - NORMS.index(norm))] * 3, "parameters": [1026.0] * 3},
        "curves": {"train_loss": {str(s): [1.0 / (e + 1) + 0.01 * s for e in range(6)] for s in SEEDS},
                   "val_accuracy": {str(s): [values[str(s)] - 0.1 / e for e in epochs] for s in SEEDS},
                   "val_epoch": {str(s): epochs for s in SEEDS}},
        "failed": [], "pending": 0,
    }


def make_document(axis_values: tuple[Any, ...] = BATCH_SIZES, axis: str = "batch_size") -> dict[str, Any]:
    """A complete document of the contract, as :func:`harness.leaderboard.document` makes one."""
    variants, variant_axes = {}, {}
    for value in axis_values:
        label = f"{axis}={value}"
        rows = [_row(norm, 0.8 + 0.03 * i, value if isinstance(value, int) else 16) for i, norm in enumerate(NORMS)]
        for rank, row in enumerate(sorted(rows, key=lambda r: -r["mean"]), start=1):
            row["rank"] = rank
        for row in rows[1:]:
            row["vs_baseline"] = {"diff": row["mean"] - rows[0]["mean"], "low": -0.01, "high": 0.05, "p": 0.01,
                                  "p_holm": 0.02, "test": "paired t", "significant": True}
        variants[label], variant_axes[label] = rows, {axis: value}
    first = next(iter(variants))
    variants[first][2]["failed"] = [{"seed": 3, "kind": "nan-loss", "reason": "loss became NaN at epoch 4"}]
    means = {label: {r["norm"]: r["mean"] for r in rows} for label, rows in variants.items()}
    return {
        "suite": {"name": "page-test", "version": 1, "sha256": "ab" * 32, "file": "suites/page.toml", "task": "toy",
                  "metric": "accuracy", "direction": "max", "baseline": "batchnorm", "seeds": list(SEEDS),
                  "description": HOSTILE, "matrix": {axis: list(axis_values)}},
        "generated": "2025-01-01T00:00:00+00:00", "versions": {"harness": "0"}, "environment": {"torch": "2"},
        "complete": True, "settings": {label: {"deterministic": False, "amp": False} for label in variants},
        "variant_axes": variant_axes, "variants": variants,
        "search": {first: [
            {"norm": "layernorm", "trial": 7, "state": "pruned", "value": 0.41, "params": {"optimizer.lr": 0.3},
             "epoch": 2, "reason": ""},
            {"norm": "layernorm", "trial": 8, "state": "complete", "value": 0.8, "params": {"optimizer.lr": 0.05},
             "epoch": None, "reason": ""}]},
        "across": asdict(across(means, "max")),
        "trials": [],
    }


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return make_document()


@pytest.fixture(scope="module")
def html(document: dict[str, Any]) -> str:
    return page(document)


def _svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == "svg"
    return root


def test_each_figure_is_inline_svg(document: dict[str, Any]) -> None:
    rows = document["variants"]["batch_size=16"]
    colors = plots.palette(list(NORMS))
    figures = [
        plots.dot_plot(rows, "accuracy", "max", colors), plots.curves_plot(rows, colors),
        plots.cost_plot(rows, "accuracy", "max", colors),
        plots.axis_plot(document["variants"], document["variant_axes"], "batch_size", "accuracy", "max", colors),
        plots.cd_diagram(document["across"]["mean_rank"], document["across"]["posthoc"], colors),
        plots.profiles_plot(document["across"]["profiles"], colors),
    ]
    for svg in figures:
        assert svg is not None and not svg.startswith("<?xml")
        _svg(svg)
        assert "http" not in svg and "xlink" not in svg
    assert plots.dot_plot(rows, "accuracy", "max", colors) == figures[0], "figures are deterministic"
    assert "oracle: balanced/accuracy" in figures[0]


def test_missing_data_draws_nothing() -> None:
    colors = plots.palette(list(NORMS))
    assert plots.curves_plot([{"norm": "batchnorm"}], colors) is None
    assert plots.cost_plot([{"norm": "batchnorm", "mean": 0.5, "costs": {}}], "accuracy", "max", colors) is None
    assert plots.cd_diagram({"a": 1.0, "b": 2.0}, None, colors) is None
    assert plots.profiles_plot(None, colors) is None


def test_pareto_front_follows_the_direction() -> None:
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (2.0, 0.4), (4.0, 0.9)]
    assert plots.pareto_front(points, "max") == [0, 1, 4]
    assert plots.pareto_front(points, "min") == [0, 3]


def test_page_is_self_contained(html: str) -> None:
    lowered = html.lower()
    for reference in ("http://", "https://", "src=", "<link", "@import", "url(http"):
        assert reference not in lowered, reference


def test_every_variant_has_its_table_and_figures(html: str, document: dict[str, Any]) -> None:
    for i, label in enumerate(document["variants"], start=1):
        section = html.split(f'<section id="variant-{i}"', 1)[1].split("</section>", 1)[0]
        assert f'data-variant="{label}"' in section
        assert section.count('<table class="sortable">') == 1 and section.count("<tr data-norm=") == len(NORMS)
        for figure in ("dots", "curves", "costs"):
            assert f'<figure class="{figure}"><svg' in section, (label, figure)
        assert "Oracle protocols" in section
    first = html.split('<section id="variant-1"', 1)[1].split("</section>", 1)[0]
    assert "loss became NaN at epoch 4" in first and "1 pruned, 1 complete" in first and "optimizer.lr 0.3" in first


def test_page_escapes_the_suite_text(html: str) -> None:
    assert HOSTILE not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert html.count("<script>") == 1  # the sorting script, nothing else


def test_a_hostile_norm_label_stays_text() -> None:
    doc = make_document()
    for rows in doc["variants"].values():
        rows[1]["norm"] = "<img onerror=x>"
    doc["across"] = None
    html = page(doc)
    assert "<img" not in html and "&lt;img onerror=x&gt;" in html


def test_axis_figure_only_for_numeric_axes(html: str) -> None:
    assert '<section id="axis-1" class="axis" data-axis="batch_size">' in html
    words = page(make_document(("spiral", "digits"), axis="dataset"))
    assert 'class="axis"' not in words
    assert cells.numeric_axes({"a": {"bs": 16, "flag": True}, "b": {"bs": 64, "flag": False}}) == ["bs"]


def test_axis_figure_has_a_panel_per_value_of_the_other_axes() -> None:
    doc = make_document()
    variants, axes = {}, {}
    for dataset in ("spiral", "digits"):
        for label, rows in doc["variants"].items():
            variants[f"{dataset}/{label}"], axes[f"{dataset}/{label}"] = rows, {"dataset": dataset,
                                                                                **doc["variant_axes"][label]}
    svg = plots.axis_plot(variants, axes, "batch_size", "accuracy", "max", plots.palette(list(NORMS)))
    assert "dataset = spiral" in svg and "dataset = digits" in svg
    assert cells.numeric_axes(axes) == ["batch_size"]


def test_across_section(html: str) -> None:
    section = html.split('<section id="across"', 1)[1].split("</section>", 1)[0]
    assert "Friedman χ²" in section and '<figure class="cd"><svg' in section
    assert '<figure class="profiles"><svg' in section and "Mean rank over variants" in section
    doc = make_document()
    doc["across"] = None
    assert 'id="across"' not in page(doc)


def test_an_old_document_without_the_new_keys_renders() -> None:
    """Documents written before the page (no ci, curves, axes, search, across) still render."""
    doc = make_document()
    for key in ("variant_axes", "search", "across"):
        del doc[key]
    for rows in doc["variants"].values():
        for row in rows:
            for key in ("ci", "curves"):
                del row[key]
            if row["vs_baseline"]:
                del row["vs_baseline"]["significant"], row["vs_baseline"]["p_holm"]
    html = page(doc)
    assert html.count('<table class="sortable">') == 2 and 'class="curves"' not in html and 'class="axis"' not in html


# --- in a real browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Any:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver here: install it with bash scripts/install_browser.sh "
                    "(Debian's chromium and chromium-driver) to run the page's browser test")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--metrics-recording-only"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    yield session
    session.quit()


def open_page(browser: Any, path: Path) -> None:
    """Open ``path`` in the browser and check that it loads cleanly: no console errors, no request
    but the page itself."""
    url = path.as_uri()
    browser.get_log("performance")  # only this page's requests from here on
    browser.get(url)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
    assert {u for u in urls if u != url and not u.startswith("data:")} == set()


def test_page_in_chromium(browser: Any, html: str, document: dict[str, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    path = tmp_path / "page-test.html"
    path.write_text(html, encoding="utf-8")
    open_page(browser, path)
    browser.set_window_size(1280, 900)  # the width first: the height depends on it
    browser.set_window_size(1280, browser.execute_script("return document.documentElement.scrollHeight") + 150)
    screenshot = tmp_path / "page-test.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000, "a blank page"
    if os.environ.get("HARNESS_SCREENSHOT_DIR"):
        shutil.copy(screenshot, Path(os.environ["HARNESS_SCREENSHOT_DIR"]) / screenshot.name)

    for i, label in enumerate(document["variants"], start=1):
        section = browser.find_element(By.ID, f"variant-{i}")
        assert section.get_attribute("data-variant") == label
        assert len(section.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")) == len(NORMS)
        assert len(section.find_elements(By.CSS_SELECTOR, "figure > svg")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, "#across figure > svg")

    table = browser.find_element(By.CSS_SELECTOR, "#variant-1 table.sortable")
    order = [r.get_attribute("data-norm") for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    column = next(th for th in table.find_elements(By.CSS_SELECTOR, "thead th") if th.text == "train s")
    button = column.find_element(By.TAG_NAME, "button")  # train seconds: the reverse of the ranks here
    button.click()
    ascending = [r.get_attribute("data-norm") for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert ascending != order and column.get_attribute("aria-sort") == "ascending"
    button.click()
    descending = [r.get_attribute("data-norm") for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert descending == ascending[::-1]
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


PUBLISHED = sorted((Path(__file__).parents[1] / "leaderboard").glob("*.html"))


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_each_published_page_opens_with_every_variant(browser: Any, path: Path) -> None:
    """The leaderboards in the repository's leaderboard/ (scripts/publish_leaderboards.sh): each
    page loads cleanly and shows every variant of its JSON with its table and figures."""
    from selenium.webdriver.common.by import By

    open_page(browser, path)
    variants = json.loads(path.with_suffix(".json").read_text())["variants"]
    sections = browser.find_elements(By.CSS_SELECTOR, "section[data-variant]")
    assert [s.get_attribute("data-variant") for s in sections] == list(variants)
    for section, rows in zip(sections, variants.values(), strict=True):
        assert len(section.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")) == len(rows)
        assert len(section.find_elements(By.CSS_SELECTOR, "figure > svg")) >= 2


def test_the_page_leaves_the_document_as_it_is(document: dict[str, Any]) -> None:
    before = copy.deepcopy(document)
    page(document)
    assert document == before
