"""A validated suite as a list of studies: one per (task variant, norm), with stable ids.

A study's name carries a hash of everything that changes its result (task configuration, norm
and its whole config, defaults included), so editing a suite starts new studies and never mixes
old trials into the leaderboard, while re-running an unchanged suite finds its finished trials.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .suite import NormSpec, Suite, Variant
from .task import Task


@dataclass(frozen=True)
class StudyPlan:
    suite: str
    task: Task
    variant: Variant
    norm: NormSpec
    seeds: tuple[int, ...]
    metric: str
    direction: str

    @property
    def key(self) -> str:
        content = {
            "task": self.task.name,
            "config": self.variant.config.model_dump(mode="json"),
            "norm": self.norm.norm.name,
            "params": self.norm.config.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.variant.label}/{self.norm.label}/{self.key}"

    @property
    def slug(self) -> str:
        """A path-safe identifier for the study's run directory."""
        return f"{_safe(self.variant.label)}/{_safe(self.norm.label)}-{self.key}"

    def attrs(self) -> dict[str, Any]:
        """What the study records about itself, for the leaderboard and for people reading storage."""
        return {
            "suite": self.suite,
            "task": self.task.name,
            "variant": self.variant.label,
            "config": self.variant.config.model_dump(mode="json"),
            "norm": self.norm.label,
            "norm_use": self.norm.norm.name,
            "norm_params": self.norm.params,
            "norm_config": self.norm.config.model_dump(mode="json"),
            "metric": self.metric,
        }


def make_plan(suite: Suite) -> list[StudyPlan]:
    """The studies of a suite, in the order the suite declares them."""
    return [
        StudyPlan(
            suite=suite.name, task=suite.task, variant=variant, norm=norm,
            seeds=tuple(suite.seeds), metric=suite.metric, direction=suite.direction,
        )
        for variant, norm in suite.pairs()
    ]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
