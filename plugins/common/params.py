"""Parameter fields that several norms share, each defined once as a small :class:`NormConfig`
mixin; a norm's config composes them by inheritance and adds its own fields.

``class BatchNormConfig(RunningStatsConfig, ProjectionConfig)`` has ``momentum``, ``eps`` and
``projection``, with one type, default, range and help for each wherever they are used. A mixin
whose field only the protocol reads lists it in its ``protocol_only``; a config composed of
mixins gets the union of theirs (:class:`harness.NormConfig`). Torch-free: registration modules import it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from harness.norm import NormConfig, Search

__all__ = ["EpsConfig", "ProjectionConfig", "RunningStatsConfig"]


class EpsConfig(NormConfig):
    """``eps``: the norm's variance stabilizer."""

    eps: float = Field(1e-5, gt=0, description="added to the variance")


class RunningStatsConfig(EpsConfig):
    """``momentum`` and ``eps`` of a norm that keeps BN's running statistics."""

    momentum: Annotated[float, Search(0.01, 0.5, log=True)] = Field(
        0.1, gt=0, le=1, description="running-statistics update rate (PyTorch convention)"
    )


class ProjectionConfig(NormConfig):
    """``projection`` (Shekhovtsov & Flach, 2018), applied by the protocol after each optimizer step."""

    protocol_only: ClassVar[frozenset[str]] = frozenset({"projection"})

    projection: bool = Field(
        False,
        description="project every weight feeding a norm onto ‖w‖ = 1 after each optimizer step, "
        "without weight decay on them (Shekhovtsov & Flach, 2018)",
    )
