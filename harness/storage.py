"""Trial bookkeeping on Optuna's RDB storage: planned runs are enqueued trials, one per seed.

Workers claim a waiting trial with the storage's own atomic state change, record heartbeats
while it runs, and store the result on it. Any number of ``harness run`` processes pointed at
one database share the work without duplicates; a dead worker's trial is found (its process is
gone, or its heartbeat is stale) and enqueued again. There is no queue besides Optuna's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from .errors import Problem, UserError
from .locks import file_lock
from .plan import StudyPlan

HEARTBEAT_SECONDS = 30
#: ``fail_reason`` kinds after which a trial is simply run again: the work was cut short.
RETRYABLE = frozenset({"interrupted", "worker-died"})

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats


def default_url(out_dir: Path, suite_name: str) -> str:
    path = (out_dir / "runs" / suite_name / "storage.db").resolve()
    return f"sqlite:///{path}"


def open_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS) -> RDBStorage:
    """Optuna's storage at ``url``, its schema created on first use. A new SQLite file is created
    under a lock, so that two runs started together do not both create the tables. What a user
    can fix (a missing driver, an unreachable, unwritable or corrupted database) is a
    :class:`~harness.errors.UserError` naming the URL, its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise UserError(Problem("--storage", "", f"{url!r} is not an SQLAlchemy URL")) from None
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        with _creation_lock(url):
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                              grace_period=2 * heartbeat)
    except (ImportError, OSError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        reason = " ".join(str(exc).split("\n")[0].split())[:300]
        raise UserError(Problem(shown, "", f"cannot open the trial storage ({type(exc).__name__}: {reason})")) from None


#: The PostgreSQL advisory lock held while Optuna's schema is created (any fixed 64-bit key).
SCHEMA_LOCK_KEY = 0x6E6F726D62656E63  # "normbenc"


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Held while Optuna creates its schema on first use, so that processes started together do
    not both create the tables (two would fail on SQLite and on PostgreSQL alike): a file lock
    beside a SQLite file, a session advisory lock on PostgreSQL."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Claim:
    """A trial this worker now owns."""

    plan: StudyPlan
    study: optuna.Study
    trial: FrozenTrial
    trial_id: int  # the storage's id of the trial

    @property
    def seed(self) -> int:
        return int(self.trial.user_attrs["seed"])

    @property
    def resume(self) -> bool:
        return bool(self.trial.user_attrs.get("resume", False))


class TrialBook:
    """The trials of one suite plan in one storage."""

    def __init__(self, storage: RDBStorage, plans: list[StudyPlan]) -> None:
        self.storage = storage
        self.plans = plans
        self.studies: dict[str, optuna.Study] = {}

    def study(self, plan: StudyPlan) -> optuna.Study:
        if plan.name not in self.studies:
            direction = "maximize" if plan.direction == "max" else "minimize"
            try:
                study = optuna.create_study(storage=self.storage, study_name=plan.name, direction=direction)
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=plan.name, storage=self.storage)
            else:
                for key, value in plan.attrs().items():
                    study.set_user_attr(key, value)
            self.studies[plan.name] = study
        return self.studies[plan.name]

    def existing(self, plan: StudyPlan) -> optuna.Study | None:
        """The study if it is in storage already; never creates one (for read-only views)."""
        try:
            return self.studies.get(plan.name) or optuna.load_study(study_name=plan.name, storage=self.storage)
        except KeyError:
            return None

    def sync(self, retry_failed: bool = False) -> None:
        """Fail the trials of dead workers, then enqueue every seed that has nothing to show."""
        for plan in self.plans:
            study = self.study(plan)
            self._fail_dead(study)
            by_seed: dict[int, list[FrozenTrial]] = {}
            for trial in study.get_trials(deepcopy=False):
                if "seed" in trial.user_attrs:
                    by_seed.setdefault(int(trial.user_attrs["seed"]), []).append(trial)
            for seed in plan.seeds:
                trials = by_seed.get(seed, [])
                if any(_settled(t, retry_failed) for t in trials):
                    continue
                resume = any(_retryable(t) for t in trials)
                study.enqueue_trial({}, user_attrs={"seed": seed, "resume": resume})

    def _fail_dead(self, study: optuna.Study) -> None:
        host = socket.gethostname()
        grace = datetime.timedelta(seconds=self.storage.grace_period or 2 * HEARTBEAT_SECONDS)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get("worker", ""))
            worker_host, _, pid = owner.rpartition(":")
            dead = worker_host == host and pid.isdigit() and not _alive(int(pid))
            # Claimed, but the worker died before it recorded itself and a heartbeat: nobody else
            # would ever fail it (Optuna's stale check needs a heartbeat).
            ownerless = not owner and trial.datetime_start is not None and \
                datetime.datetime.now() - trial.datetime_start > grace
            if dead or ownerless:
                self._finish(self._id(study, trial), "worker-died", "the worker process ended during the trial")
        fail_stale_trials(study)  # other machines: Optuna's heartbeat

    def claim(self) -> Claim | None:
        """Take the oldest waiting trial of any study, atomically, or return None."""
        for plan in self.plans:
            study = self.study(plan)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                trial_id = self._id(study, trial)
                if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    continue  # another worker was quicker
                if self._duplicate(study, trial):
                    self._finish(trial_id, "duplicate", "another trial already ran this seed")
                    continue
                self.storage.set_trial_user_attr(trial_id, "worker", worker_id())
                self.storage.record_heartbeat(trial_id)
                return Claim(plan, study, self.storage.get_trial(trial_id), trial_id)
        return None

    def _id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        """The storage's id of a trial, through the storage's public API (Optuna's FrozenTrial
        keeps it private)."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    @staticmethod
    def _duplicate(study: optuna.Study, claimed: FrozenTrial) -> bool:
        """Did two workers enqueue the same seed at once? Then the later-claimed copy is dropped."""
        seed = claimed.user_attrs["seed"]
        return any(
            t.number != claimed.number and t.user_attrs.get("seed") == seed
            and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
            for t in study.get_trials(deepcopy=False)
        )

    def in_flight(self) -> int:
        """Trials waiting or running anywhere (this worker's or others')."""
        states = (TrialState.WAITING, TrialState.RUNNING)
        return sum(len(self.study(p).get_trials(deepcopy=False, states=states)) for p in self.plans)

    def set_attr(self, claim: Claim, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, key, value)

    def complete(self, claim: Claim, value: float, attrs: dict[str, Any]) -> None:
        for key, item in attrs.items():
            self.set_attr(claim, key, item)
        claim.study.tell(claim.trial.number, value)

    def fail(self, claim: Claim, kind: str, reason: str, attrs: dict[str, Any] | None = None) -> None:
        for key, item in (attrs or {}).items():
            self.set_attr(claim, key, item)
        self._finish(claim.trial_id, kind, reason)

    def _finish(self, trial_id: int, kind: str, reason: str) -> None:
        self.storage.set_trial_user_attr(trial_id, "fail_kind", kind)
        self.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def trials(self, plan: StudyPlan) -> Iterator[FrozenTrial]:
        study = self.existing(plan)
        if study is not None:
            yield from study.get_trials(deepcopy=False)

    def heartbeat(self, claim: Claim) -> Heartbeat:
        return Heartbeat(self.storage, claim.trial_id)


class Heartbeat:
    """Records the claimed trial's heartbeat until stopped, so other machines see it alive."""

    def __init__(self, storage: RDBStorage, trial_id: int) -> None:
        self._stop = threading.Event()
        interval = storage.get_heartbeat_interval() or HEARTBEAT_SECONDS

        def beat() -> None:
            while not self._stop.wait(interval):
                storage.record_heartbeat(trial_id)

        self._thread = threading.Thread(target=beat, name="harness-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _settled(trial: FrozenTrial, retry_failed: bool) -> bool:
    """Does this trial stand for its seed (finished, under way, or failed for good)?"""
    if trial.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING):
        return True
    if trial.state == TrialState.FAIL:
        return not (_retryable(trial) or retry_failed or trial.user_attrs.get("fail_kind") == "duplicate")
    return False


def _retryable(trial: FrozenTrial) -> bool:
    # A trial failed by Optuna's stale-heartbeat check carries no fail_kind: its worker vanished.
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind", "worker-died") in RETRYABLE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
