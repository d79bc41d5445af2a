"""What a worker tells whoever watches it run a suite: one method per stage, as mmengine's
``Hook`` has one per point of its loop. :class:`RunEvents` does nothing at each; the progress
display (:class:`harness.progress.RunProgress`) overrides what it draws. A trial process sends
:class:`EpochEnd` to its worker at the end of each training epoch, and :class:`Validated` after
each validation (what a search's pruner reads). ``trial`` names a trial to people: ``"seed 0"``,
``"search 3/8"``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import StudyPlan
    from .worker import Outcome


@dataclass(frozen=True)
class EpochEnd:
    """A training epoch ended (``epoch`` counts from 1): the mean training loss over its steps."""

    epoch: int
    epochs: int
    loss: float


@dataclass(frozen=True)
class Validated:
    """The validation metrics after ``epoch`` (counted from 1) of ``epochs``."""

    epoch: int
    epochs: int
    metrics: dict[str, float]


TrialEvent = EpochEnd | Validated  # what a trial process sends its worker as it trains


class RunEvents:
    """The stages of a worker's run; override the ones to act on."""

    def trial_started(self, plan: StudyPlan, trial: str) -> None:
        """A trial was claimed and is about to start."""

    def device_chosen(self, plan: StudyPlan, trial: str, device: str) -> None:
        """The trial got its device (``"cpu"``, ``"cuda:0"``, ``"cuda:0,1"``)."""

    def waiting_for_gpus(self, plan: StudyPlan, trial: str, devices: int) -> None:
        """The trial waits for ``devices`` GPUs that other workers' trials hold."""

    def epoch_ended(self, plan: StudyPlan, trial: str, end: EpochEnd) -> None:
        """A training epoch of the trial ended."""

    def trial_ended(self, plan: StudyPlan, trial: str, outcome: Outcome) -> None:
        """The trial completed or failed (``outcome.ok``, and why not)."""

    def waiting_for_workers(self, in_flight: int) -> None:
        """Nothing is left to claim while ``in_flight`` trials of other workers still run."""
