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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from .errors import Problem, UserError
from .locks import file_lock
from .plan import StudyPlan

HEARTBEAT_SECONDS = 30
SEED, SLOT = "seed", "slot"  # the user attribute that says which seed, or which search slot, a trial is
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
    """A trial this worker now owns: a final trial (one seed of a comparison), or a search trial
    (one slot of its search, with the point its sampler chose)."""

    plan: StudyPlan
    study: optuna.Study
    trial: FrozenTrial
    trial_id: int  # the storage's id of the trial
    params: dict[str, Any] = field(default_factory=dict)  # sampled (search) or tuned (final)
    handle: optuna.Trial | None = None  # a search trial's, to report to its pruner

    @property
    def search(self) -> bool:
        return SLOT in self.trial.user_attrs

    @property
    def seed(self) -> int:
        """The training seed: a final trial's own; a search trial trains with the suite's first."""
        return self.plan.seeds[0] if self.search else int(self.trial.user_attrs[SEED])

    @property
    def label(self) -> str:
        return f"search {self.trial.user_attrs[SLOT] + 1}/{self.plan.search.trials}" if self.search \
            else f"seed {self.seed}"

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
        """The study of a comparison's final trials (one per seed)."""
        return self._open(plan.name, plan, {})

    def search_study(self, plan: StudyPlan) -> optuna.Study:
        """The study of a comparison's search (one trial per slot), with the suite's pruner."""
        from .search import pruner

        epochs = plan.search.epochs or plan.variant.config.epochs
        return self._open(plan.search_name, plan, {"phase": "search"}, pruner(plan.search, epochs))

    def _open(self, name: str, plan: StudyPlan, attrs: dict[str, Any], pruner: Any = None) -> optuna.Study:
        if name not in self.studies:
            direction = "maximize" if plan.direction == "max" else "minimize"
            try:
                study = optuna.create_study(storage=self.storage, study_name=name, direction=direction, pruner=pruner)
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=name, storage=self.storage, pruner=pruner)
            else:
                for key, value in {**plan.attrs(), **attrs}.items():
                    study.set_user_attr(key, value)
            self.studies[name] = study
        return self.studies[name]

    def existing(self, plan: StudyPlan, search: bool = False) -> optuna.Study | None:
        """The finals' (or the search's) study if it is in storage already; never creates one
        (for read-only views)."""
        name = plan.search_name if search else plan.name
        try:
            return self.studies.get(name) or optuna.load_study(study_name=name, storage=self.storage)
        except KeyError:
            return None

    def sync(self, retry_failed: bool = False) -> None:
        """Fail the trials of dead workers, then enqueue every search slot and every seed that has
        nothing to show. A comparison's finals are enqueued once its search has finished, with
        the best point found."""
        from .search import best_params, grid_points

        for plan in self.plans:
            study = self.study(plan)
            self._fail_dead(study)
            params: dict[str, Any] = {}
            if plan.search is not None:
                search = self.search_study(plan)
                self._fail_dead(search)
                slots = range(plan.search.trials)
                grid = grid_points(plan.search, plan.space.distributions) if plan.search.sampler == "grid" else None
                if not self._enqueue_missing(search, SLOT, slots, retry_failed, resumable=False, fixed=grid):
                    continue  # the search is under way: its finals wait for it
                found = best_params(search)
                if found is None:
                    continue  # no search trial completed: nothing to run the finals with
                params = found
            self._enqueue_missing(study, SEED, plan.seeds, retry_failed, resumable=True, params=params)

    @staticmethod
    def _enqueue_missing(study: optuna.Study, key: str, values: Any, retry_failed: bool, resumable: bool,
                         fixed: list[dict[str, Any]] | None = None, **attrs: Any) -> bool:
        """Enqueue a trial for each value of ``key`` (a seed, a search slot) that has nothing to
        show, with ``fixed[value]`` as its point where given; True when every value's trial has
        finished."""
        by_value: dict[int, list[FrozenTrial]] = {}
        for trial in study.get_trials(deepcopy=False):
            if key in trial.user_attrs:
                by_value.setdefault(int(trial.user_attrs[key]), []).append(trial)
        finished = True
        for value in values:
            trials = by_value.get(value, [])
            finished &= not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
            if any(_settled(t, retry_failed) for t in trials):
                continue
            resume = resumable and any(_retryable(t) for t in trials)
            study.enqueue_trial(fixed[value] if fixed else {}, user_attrs={key: value, "resume": resume, **attrs})
            finished = False
        return finished

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
        """Take the oldest waiting trial of any study, atomically, or return None. A search
        trial gets its point from the sampler as it is claimed."""
        for plan in self.plans:
            studies = [self.search_study(plan)] if plan.search is not None else []
            for study in [*studies, self.study(plan)]:
                for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    trial_id = self._id(study, trial)
                    if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                        continue  # another worker was quicker
                    if self._duplicate(study, trial):
                        self._finish(trial_id, "duplicate", "another trial already ran this seed or slot")
                        continue
                    self.storage.set_trial_user_attr(trial_id, "worker", worker_id())
                    self.storage.record_heartbeat(trial_id)
                    claim = Claim(plan, study, self.storage.get_trial(trial_id), trial_id,
                                  dict(trial.user_attrs.get("params", {})))
                    if claim.search:
                        claim.handle, claim.params = self._sample(plan, study, trial_id, trial.number)
                    return claim
        return None

    def _sample(self, plan: StudyPlan, study: optuna.Study, trial_id: int, number: int,
                ) -> tuple[optuna.Trial, dict[str, Any]]:
        from .search import sampler, suggest

        space = plan.space.distributions
        study.sampler = sampler(plan.search, space, number)
        handle = optuna.trial.Trial(study, trial_id)
        return handle, suggest(handle, space)

    def _id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        """The storage's id of a trial, through the storage's public API (Optuna's FrozenTrial
        keeps it private)."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    @staticmethod
    def _duplicate(study: optuna.Study, claimed: FrozenTrial) -> bool:
        """Did two workers enqueue the same seed (or search slot) at once? Then the later-claimed
        copy is dropped."""
        key = SLOT if SLOT in claimed.user_attrs else SEED
        value = claimed.user_attrs[key]
        return any(
            t.number != claimed.number and t.user_attrs.get(key) == value
            and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
            for t in study.get_trials(deepcopy=False)
        )

    def in_flight(self) -> int:
        """Trials waiting or running anywhere (this worker's or others'), searches included."""
        states = (TrialState.WAITING, TrialState.RUNNING)
        studies = [s for p in self.plans for s in ([self.search_study(p)] if p.search else []) + [self.study(p)]]
        return sum(len(s.get_trials(deepcopy=False, states=states)) for s in studies)

    def set_attr(self, claim: Claim, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(claim.trial_id, key, value)

    def complete(self, claim: Claim, value: float, attrs: dict[str, Any]) -> None:
        for key, item in attrs.items():
            self.set_attr(claim, key, item)
        claim.study.tell(claim.trial.number, value)

    def report(self, claim: Claim, epoch: int, value: float) -> bool:
        """A search trial's validation metric after ``epoch``: should its pruner stop it?"""
        assert claim.handle is not None
        claim.handle.report(value, epoch)
        return claim.handle.should_prune()

    def prune(self, claim: Claim, attrs: dict[str, Any]) -> None:
        for key, item in attrs.items():
            self.set_attr(claim, key, item)
        claim.study.tell(claim.trial.number, state=TrialState.PRUNED)

    def fail(self, claim: Claim, kind: str, reason: str, attrs: dict[str, Any] | None = None) -> None:
        for key, item in (attrs or {}).items():
            self.set_attr(claim, key, item)
        self._finish(claim.trial_id, kind, reason)

    def _finish(self, trial_id: int, kind: str, reason: str) -> None:
        self.storage.set_trial_user_attr(trial_id, "fail_kind", kind)
        self.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def trials(self, plan: StudyPlan, search: bool = False) -> Iterator[FrozenTrial]:
        study = self.existing(plan, search)
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
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING):
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
