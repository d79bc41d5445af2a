"""What ``harness run`` shows: a bar for the suite, a bar for the trial in hand, and a summary."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .events import EpochEnd, RunEvents
from .leaderboard import Board, Source, read
from .plan import StudyPlan
from .storage import TrialBook
from .suite import Suite
from .worker import Outcome


class RunProgress(RunEvents):
    """Draws a worker's run with rich."""

    def __init__(self, suite: Suite, plans: list[StudyPlan], book: TrialBook) -> None:
        self.console = Console(stderr=True)
        searches = [p for p in plans if p.search is not None]
        total = len(plans) * len(suite.seeds) + sum(p.search.trials for p in searches)
        board = read(Source(suite, plans, book))
        done = len(plans) * len(suite.seeds) - sum(r.pending for rows in board.variants.values() for r in rows)
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        done += sum(len(book.search_study(p).get_trials(deepcopy=False, states=finished)) for p in searches)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"), console=self.console,
        )
        self.suite_bar = self.progress.add_task(f"{suite.name}", total=total, completed=done, note="")
        self.trial_bar = self.progress.add_task("", total=1, visible=False, note="")
        if done:
            self.console.print(f"{done} of {total} trials already in storage; running the rest")

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def trial_started(self, plan: StudyPlan, trial: str) -> None:
        self.progress.update(self.trial_bar, description=f"  {plan.variant.label} · {plan.norm.label} · {trial}",
                             total=plan.variant.config.epochs, completed=0, visible=True, note="")

    def device_chosen(self, plan: StudyPlan, trial: str, device: str) -> None:
        if device != "cpu":
            task = next(t for t in self.progress.tasks if t.id == self.trial_bar)
            self.progress.update(self.trial_bar, description=f"{task.description} · {device}", note="")

    def waiting_for_gpus(self, plan: StudyPlan, trial: str, devices: int) -> None:
        self.progress.update(self.trial_bar, note=f"waiting for {devices} free GPU(s)")

    def epoch_ended(self, plan: StudyPlan, trial: str, end: EpochEnd) -> None:
        self.progress.update(self.trial_bar, completed=end.epoch, total=end.epochs, note=f"loss {end.loss:.4g}")

    def trial_ended(self, plan: StudyPlan, trial: str, outcome: Outcome) -> None:
        self.progress.advance(self.suite_bar)
        if not outcome.ok:
            self.progress.console.print(f"[red]failed[/red] {plan.variant.label} · {plan.norm.label} · {trial}: "
                                        f"{outcome.kind}: {outcome.reason}")

    def waiting_for_workers(self, in_flight: int) -> None:
        self.progress.update(self.trial_bar, visible=True, description="  waiting for other workers",
                             note=f"{in_flight} trial(s) in flight")


def print_summary(board: Board, paths: list[Path]) -> None:
    console = Console()
    suite = board.suite
    for label, rows in board.variants.items():
        table = Table(title=f"{suite.name} · {label} · {suite.metric}", title_justify="left")
        for column in ("rank", "norm", suite.metric, "n", "Δ baseline", "failed"):
            table.add_column(column)
        for row in sorted(rows, key=lambda r: (r.rank is None, r.rank or 0)):
            mean = "–" if row.mean is None else f"{row.mean:.4f}"
            if row.std is not None:
                mean += f" ± {row.std:.4f}"
            delta = "" if row.vs_baseline is None else f"{row.vs_baseline.diff:+.4f}"
            if row.vs_baseline and row.vs_baseline.significant:
                delta += "*"
            table.add_row(str(row.rank or "–"), row.norm, mean, str(row.n), delta, str(len(row.failed) or ""))
        console.print(table)
    console.print("leaderboard: " + ", ".join(str(p) for p in paths))
