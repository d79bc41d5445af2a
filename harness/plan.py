"""A validated suite as a list of studies: one per (task variant, norm), with stable ids.

A study's name carries a hash of everything that changes its result (task configuration, norm
and its whole config, defaults included), so editing a suite starts new studies and never mixes
old trials into the leaderboard, while re-running an unchanged suite finds its finished trials.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .suite import NormSpec, SearchSection, Suite, Variant
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
    search: SearchSection | None = None  # tune on the validation split first, then run the finals

    @property
    def key(self) -> str:
        content = {
            "task": self.task.name,
            "config": self.variant.config.model_dump(mode="json"),
            "norm": self.norm.norm.name,
            "params": self.norm.config.model_dump(mode="json"),
        }
        if self.search is not None:  # a changed space or budget is a new search (and new finals)
            content["search"] = self.search.model_dump(mode="json")
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.variant.label}/{self.norm.label}/{self.key}"

    @property
    def search_name(self) -> str:
        """The name of the study that tunes this comparison (its finals are in :attr:`name`)."""
        return f"{self.name}/search"

    @functools.cached_property
    def space(self) -> Any:
        """The search space of this comparison (:class:`harness.space.Space`), resolved once:
        workers read it at every claim and every poll."""
        from .space import resolve_space

        assert self.search is not None
        return resolve_space(self.search.space, self.variant.config, self.norm.config,
                             grid=self.search.sampler == "grid")

    def configs(self, params: dict[str, Any], search: bool) -> tuple[Any, Any]:
        """The task and norm configs of a trial with tuned or sampled ``params``; a search trial
        trains for the search's ``epochs`` where the suite gives them."""
        from .space import with_values

        task, norm = self.variant.config, self.norm.config
        if params:
            task, norm = self.space.configs(params, task, norm)
        if search and self.search is not None and self.search.epochs is not None:
            task = with_values(task, {"epochs": self.search.epochs})
        return task, norm

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
            seeds=tuple(suite.seeds), metric=suite.metric, direction=suite.direction, search=suite.search,
        )
        for variant, norm in suite.pairs()
    ]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
