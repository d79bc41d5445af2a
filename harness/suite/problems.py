"""pydantic's validation errors as :class:`~harness.errors.Problem`\\ s: the file, the key as the
suite writes it (``norm[2].eps``, ``[[norm]]`` entries counted from 1) and what is allowed."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import Problem, did_you_mean
from .schema import SECTIONS, SuiteFile


def key(section: str, loc: tuple[Any, ...]) -> str:
    """``section`` followed by a pydantic location: names dotted, list positions ``[i]`` from 1."""
    found = section
    for part in loc:
        found += f"[{part + 1}]" if isinstance(part, int) else f".{part}"
    return found


def message(err: Any, model: type[BaseModel] | None = None) -> str:
    """What is wrong and what is allowed; an unknown key of ``model`` gets its known keys and
    the closest of them."""
    if err["type"] == "extra_forbidden":
        if model is None:
            return "unknown key (check the spelling)"
        name = str(err["loc"][-1]) if err["loc"] else ""
        return (f"unknown key{did_you_mean(name, model.model_fields)}; allowed: "
                f"{', '.join(sorted(model.model_fields)) or 'none'}")
    if err["type"] == "missing":
        return "required key is missing"
    return f"{err['msg']} (got {json.dumps(err.get('input'), default=str)})"


def of_model(file: str, section: str, exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """The problems of one section validated by ``model`` (a task's or a norm's config)."""
    return [Problem(file, key(section, err["loc"]), message(err, model)) for err in exc.errors()]


def of_file(file: str, exc: ValidationError) -> list[Problem]:
    """The problems of the file's shape (:class:`~harness.suite.schema.SuiteFile`)."""
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) <= 1:  # a top-level key
            problems.append(Problem(file, ".".join(map(str, loc)), message(err, SuiteFile)))
            continue
        section = str(loc[0])
        model = SECTIONS.get(section) if len(loc) == 2 else None
        problems.append(Problem(file, key(section, loc[1:]), message(err, model)))
    return problems
