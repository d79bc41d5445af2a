"""Hundreds of generated bad suites, one wrong value each: every key of ``[suite]``, ``[task]`` (a
toy task, its optimizer and schedule) and of every registered norm's config gets values of the
wrong TOML type and values out of range. Each must be refused by ``harness check`` with exit 2,
its file and key named, at most 20 problem lines (and a count), no traceback, and nothing
written.

The wrong values come from the config models' own annotations, so a key added to a model is
covered without touching this file. ``harness check`` runs in this process (its ``main``), as
it would in a subprocess, to keep hundreds of cases to seconds; the subprocess path is covered
by ``test_suite_errors.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from harness.cli import main
from harness.plugins import load_registry
from harness.suite.schema import SuiteSection
from harness_plugins.tasks.toy import ToyConfig


class Raw(str):
    """A TOML value written as it is (the wrong one under test)."""


GOOD_SUITE: dict[str, Any] = {
    "suite": {"name": "gen", "version": 1, "seeds": [0], "metric": "accuracy", "baseline": "batchnorm"},
    "task": {"use": "toy", "dataset": "spiral", "epochs": 2, "batch_size": 16, "points_per_class": 24,
             "test_points_per_class": 24, "hidden": [8, 8], "noise": 0.2},
    "norm": [{"use": "batchnorm"}],
}


def toml(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"


def render(suite: dict[str, Any]) -> str:
    lines = []
    for section in ("suite", "task"):
        lines += [f"[{section}]", *(f"{k} = {toml(v)}" for k, v in suite[section].items()), ""]
    for entry in suite["norm"]:
        lines += ["[[norm]]", *(f"{k} = {toml(v)}" for k, v in entry.items()), ""]
    return "\n".join(lines)


def wrong_values(annotation: Any) -> list[Raw]:
    """TOML values that no field of this type accepts."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return wrong_values(args[0])
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1:
            return wrong_values(kinds[0])
        return [Raw('"no-such-value"'), Raw("[true]"), Raw("{ a = 1 }")]
    if origin is typing.Literal:
        return [Raw('"no-such-choice"'), Raw("[1]"), Raw("3.5")]
    if origin in (list, tuple):
        return [Raw('"x"'), Raw("1"), Raw("{ a = 1 }")]
    if annotation is bool:
        return [Raw('"yes"'), Raw("1"), Raw('"off"')]
    if annotation is int:
        return [Raw('"1"'), Raw("true"), Raw("1.5"), Raw("[1]")]
    if annotation is float:
        return [Raw('"0.1"'), Raw("true"), Raw("nan"), Raw("inf"), Raw("-inf"), Raw("[0.1]")]
    if annotation is str:
        return [Raw("1"), Raw("true"), Raw("[]")]
    return []  # free-form values (dict[str, Any]) have no wrong type


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(id, the key the message must name, the suite)."""
    found = []

    def add(key: str, value: Raw, edit: Any) -> None:
        suite = json.loads(json.dumps(GOOD_SUITE))
        edit(suite, value)
        found.append((f"{key}={value}", key, suite))

    for name, info in SuiteSection.model_fields.items():
        for value in wrong_values(info.annotation):
            add(f"suite.{name}", value, lambda s, v, n=name: s["suite"].__setitem__(n, v))
    for name, info in ToyConfig.model_fields.items():
        nested = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) \
            else None
        if nested is None:
            for value in wrong_values(info.annotation):
                add(f"task.{name}", value, lambda s, v, n=name: s["task"].__setitem__(n, v))
            continue
        for inner, inner_info in nested.model_fields.items():
            for value in wrong_values(inner_info.annotation):
                add(f"task.{name}.{inner}", value, lambda s, v, n=name, i=inner: s["task"].__setitem__(n, {i: v}))
    for norm_name, norm in sorted(load_registry().norms.items()):
        for name, info in norm.config.model_fields.items():
            for value in wrong_values(info.annotation):
                add(f"norm[2].{name}", value,
                    lambda s, v, u=norm_name, n=name: s["norm"].append({"use": u, "label": "extra", n: v}))
    # Out of range, beyond the types: each bound of the shared keys.
    for key, edit in {
        "suite.seeds[1]": lambda s: s["suite"].__setitem__("seeds", [-1]),
        "suite.version": lambda s: s["suite"].__setitem__("version", 0),
        "task.epochs": lambda s: s["task"].__setitem__("epochs", 0),
        "task.batch_size": lambda s: s["task"].__setitem__("batch_size", -4),
        "task.optimizer.lr": lambda s: s["task"].__setitem__("optimizer", {"lr": -0.1}),
        "task.optimizer.weight_decay": lambda s: s["task"].__setitem__("optimizer", {"weight_decay": -1.0}),
        "task.optimizer.momentum": lambda s: s["task"].__setitem__("optimizer", {"momentum": 1.0}),
        "task.schedule.gamma": lambda s: s["task"].__setitem__("schedule", {"gamma": 0.0}),
        "task.schedule.milestones[1]":
            lambda s: s["task"].__setitem__("schedule", {"name": "multistep", "milestones": [-1]}),
        "norm[2].momentum": lambda s: s["norm"].append({"use": "batchnorm", "label": "x", "momentum": -1.0}),
        "norm[2].eps": lambda s: s["norm"].append({"use": "batchnorm", "label": "x", "eps": -1e-5}),
    }.items():
        add(key, Raw("out of range"), lambda s, v, e=edit: e(s))
        found[-1] = (key, key, found[-1][2])
    return found


CASES = cases()


def test_the_generator_makes_hundreds_of_bad_suites() -> None:
    assert len(CASES) >= 300, len(CASES)


@pytest.mark.parametrize(("key", "suite"), [(key, suite) for _, key, suite in CASES], ids=[c[0] for c in CASES])
def test_every_generated_bad_suite_is_refused_naming_its_key(key: str, suite: dict[str, Any], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gen.toml"
    path.write_text(render(suite))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["check", str(path)])
    lines = err.getvalue().splitlines()
    assert code == 2, (render(suite), out.getvalue(), lines)
    assert lines and len(lines) <= 21 and "Traceback" not in err.getvalue()
    assert any(line.startswith(f"error: {path}: {key}:") for line in lines), lines
    assert list(work.iterdir()) == [], "a refused suite writes nothing"


def test_the_good_suite_of_the_generator_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cases above fail for their one wrong value, not for the rest of the suite."""
    path = tmp_path / "gen.toml"
    path.write_text(render(GOOD_SUITE))
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["check", str(path)]) == 0
