"""Trials on GPUs, tested on a CPU: the visible GPUs are faked (``HARNESS_FAKE_GPUS``), and a
norm records, from inside each trial process, the ``CUDA_VISIBLE_DEVICES`` it got and when it
trained. Trial processes come from a fork server (the start method a CUDA machine needs), never
from a fork of the worker."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.devices import Gpu, GpuPool, _parse_visible, select_gpus, visible_gpus
from harness.errors import UserError
from harness.plan import make_plan
from harness.plugins import load_registry
from harness.storage import TrialBook, open_storage
from harness.suite import load_suite

from conftest import assert_every_trial_complete, run_cli, write_suite

RECORDING_NORM = '''
import os, time
from torch import nn
from harness import Norm, hookimpl

class RecordingBN(nn.BatchNorm1d):
    """Batch norm that notes, at every training step, the process and the GPUs it was given."""
    def __init__(self, num_features, **kwargs):
        super().__init__(num_features)
        self.steps = 0
    def forward(self, x):
        record = os.environ.get("HARNESS_TEST_RECORD")
        self.steps += self.training
        if record and self.training and (self.steps < 100 or self.steps % 1000 == 0):
            line = (f"{os.getpid()} {os.getppid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')} "
                    f"{os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK', '-')} {time.time()}\\n")
            with open(record, "a") as f:
                f.write(line)
        return super().forward(x)

@hookimpl
def harness_register_norms(register):
    register(Norm(name="recording_bn", make=RecordingBN, summary="records where it trains"))
'''


def recording_suite(directory: Path, *, name: str = "gpus", seeds: str = "[0, 1]", epochs: int = 2,
                    labels: int = 1, body: str = "") -> Path:
    (directory / "recording.py").write_text(RECORDING_NORM)
    norms = "".join(f'\n[[norm]]\nuse = "recording_bn"\nlabel = "rec{i}"\n' for i in range(labels))
    path = write_suite(directory, header='plugins = ["recording.py"]\n', name=name, seeds=seeds, epochs=epochs,
                       norms=(), body=norms + body)
    path.write_text(path.read_text().replace('baseline = "batchnorm"', 'baseline = "rec0"'))
    return path


def records(path: Path) -> dict[int, dict]:
    """pid -> the trial process's parent, CUDA_VISIBLE_DEVICES, NVML flag, and first/last step time;
    the pre-flight check's step in the `harness run` process itself (no GPUs given) is left out."""
    found: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        pid, ppid, visible, nvml, when = line.split()
        if visible == "-":
            continue
        entry = found.setdefault(int(pid), {"ppid": int(ppid), "visible": visible, "nvml": nvml,
                                            "start": float(when), "end": float(when)})
        entry["end"] = float(when)
    return found


def storage_trials(work: Path, name: str) -> list:
    import optuna

    storage = f"sqlite:///{work / 'runs' / name / 'storage.db'}"
    return [t for s in optuna.get_all_study_summaries(storage)
            for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()]


# --- which GPUs a run sees and uses -----------------------------------------------------------

def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_FAKE_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert visible_gpus() == [Gpu(0, "3"), Gpu(1, "1")]
    assert _parse_visible("") == [] and _parse_visible("-1") == [] and _parse_visible("0,-1,2") == ["0"]
    assert _parse_visible("GPU-8f6c1a2b-aaaa, 1") == ["GPU-8f6c1a2b-aaaa", "1"]
    monkeypatch.setenv("HARNESS_FAKE_GPUS", "3")
    assert [g.ident for g in visible_gpus()] == ["0", "1", "2"]
    monkeypatch.setenv("HARNESS_FAKE_GPUS", "5,7")
    assert visible_gpus() == [Gpu(0, "5"), Gpu(1, "7")]


def test_gpus_option_selects_by_index() -> None:
    visible = [Gpu(0, "5"), Gpu(1, "7"), Gpu(2, "9")]
    assert select_gpus(None, visible) == visible
    assert select_gpus("2,0", visible) == [Gpu(2, "9"), Gpu(0, "5")]
    for bad, says in (("3", "no GPU 3"), ("0,0", "twice"), ("a", "not a comma-separated list"), ("", "not a")):
        with pytest.raises(UserError) as caught:
            select_gpus(bad, visible)
        assert says in str(caught.value.problems[0]) and "this machine shows 3" in str(caught.value.problems[0])
    with pytest.raises(UserError, match="no GPU is visible"):
        select_gpus("0", [])


@pytest.mark.parametrize(("gpus", "says"), [("4", "no GPU 4"), ("0,x", "not a comma-separated list")])
def test_an_invalid_gpu_list_is_bad_input(tmp_path: Path, gpus: str, says: str) -> None:
    suite = write_suite(tmp_path)
    result = run_cli("run", str(suite), "--gpus", gpus, cwd=tmp_path, env={"HARNESS_FAKE_GPUS": "2"})
    assert result.returncode == 2, result.stderr
    assert "--gpus" in result.stderr and says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_trial_needing_more_gpus_than_the_run_has_is_bad_input(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    suite.write_text(suite.read_text().replace("noise = 0.2", "noise = 0.2\ndevices = 3"))
    result = run_cli("run", str(suite), cwd=tmp_path, env={"HARNESS_FAKE_GPUS": "2"})
    assert result.returncode == 2 and "devices = 3" in result.stderr, result.stderr


# --- leases -----------------------------------------------------------------------------------

def test_leases_are_exclusive_and_each_worker_prefers_its_own_gpu(tmp_path: Path) -> None:
    gpus = [Gpu(0, "0"), Gpu(1, "1"), Gpu(2, "2")]
    first, second = GpuPool(gpus, tmp_path, home=0), GpuPool(gpus, tmp_path, home=1)
    a = first.acquire(1)
    b = second.acquire(1)
    assert (a.label, b.label, a.visible, b.visible) == ("cuda:0", "cuda:1", "0", "1")
    c = first.try_acquire(2)
    assert c is None, "one GPU is left"
    c = first.acquire(1)
    assert c.label == "cuda:2" and first.try_acquire(1) is None
    a.release()
    assert second.try_acquire(1).label == "cuda:0"


def test_a_trial_needing_two_gpus_waits_until_it_holds_both(tmp_path: Path) -> None:
    gpus = [Gpu(0, "0"), Gpu(1, "1")]
    one = GpuPool(gpus, tmp_path, home=1).acquire(1)
    got: list = []
    waited = threading.Event()
    thread = threading.Thread(target=lambda: got.append(GpuPool(gpus, tmp_path).acquire(2, waited.set, poll=0.02)))
    thread.start()
    assert waited.wait(10)
    time.sleep(0.2)
    assert not got, "it must not run on one GPU"
    # a newcomer for one GPU queues behind the waiting trial instead of taking the free GPU
    late: list = []
    newcomer = threading.Thread(target=lambda: late.append(GpuPool(gpus, tmp_path).acquire(1, poll=0.02)))
    newcomer.start()
    time.sleep(0.2)
    assert not late
    one.release()
    thread.join(10)
    assert got and got[0].label == "cuda:0,1" and got[0].visible == "0,1"
    assert not late
    got[0].release()
    newcomer.join(10)
    assert late and late[0].label in ("cuda:0", "cuda:1")


# --- whole runs on fake GPUs ------------------------------------------------------------------

def test_three_workers_on_two_gpus_never_share_one(tmp_path: Path) -> None:
    suite = recording_suite(tmp_path, labels=3)
    work = tmp_path / "work"
    work.mkdir()
    record = tmp_path / "record.txt"
    result = run_cli("run", str(suite), "--quiet", "--workers", "3", cwd=work,
                     env={"HARNESS_FAKE_GPUS": "5,7", "HARNESS_TEST_RECORD": str(record)})
    assert result.returncode == 0, result.stderr
    assert_every_trial_complete(work, "gpus", 6)
    trials = storage_trials(work, "gpus")
    assert sorted({t.user_attrs["device"] for t in trials}) == ["cuda:0", "cuda:1"]
    assert len({t.user_attrs["worker"] for t in trials}) > 1
    seen = records(record)
    assert len(seen) == 6, seen  # one process per trial, each given one GPU
    by_gpu = defaultdict(list)
    for entry in seen.values():
        assert entry["nvml"] == "1", "CUDA is never started by the trial processes' fork server"
        by_gpu[entry["visible"]].append((entry["start"], entry["end"]))
    assert set(by_gpu) == {"5", "7"}
    for spans in by_gpu.values():
        spans.sort()
        assert all(earlier[1] < later[0] for earlier, later in zip(spans, spans[1:], strict=False)), spans


def test_gpus_option_pins_the_run_to_the_chosen_gpu(tmp_path: Path) -> None:
    suite = recording_suite(tmp_path, seeds="[0]", epochs=1)
    record = tmp_path / "record.txt"
    result = run_cli("run", str(suite), "--quiet", "--gpus", "1", cwd=tmp_path,
                     env={"HARNESS_FAKE_GPUS": "5,7", "HARNESS_TEST_RECORD": str(record)})
    assert result.returncode == 0, result.stderr
    assert_every_trial_complete(tmp_path, "gpus", 1)
    assert [t.user_attrs["device"] for t in storage_trials(tmp_path, "gpus")] == ["cuda:1"]
    assert [e["visible"] for e in records(record).values()] == ["7"]


@pytest.mark.slow
def test_a_two_device_trial_gets_two_gpus_for_its_ranks(tmp_path: Path) -> None:
    suite = recording_suite(tmp_path, name="ddp", seeds="[0]", epochs=1)
    suite.write_text(suite.read_text().replace("noise = 0.2", "noise = 0.2\ndevices = 2"))
    record = tmp_path / "record.txt"
    result = run_cli("run", str(suite), "--quiet", cwd=tmp_path, timeout=600,
                     env={"HARNESS_FAKE_GPUS": "3", "HARNESS_TEST_RECORD": str(record)})
    assert result.returncode == 0, result.stderr
    assert_every_trial_complete(tmp_path, "ddp", 1)
    (trial,) = storage_trials(tmp_path, "ddp")
    assert trial.user_attrs["device"] == "cuda:0,1"
    ranks = records(record)
    assert len(ranks) == 2 and {e["visible"] for e in ranks.values()} == {"0,1"}


# --- the trial process itself -----------------------------------------------------------------

def test_trials_start_from_the_fork_server_and_rebuild_local_plugins(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own trial path, in this process: a trial process is not a fork of the worker
    (whose state, a CUDA context on a GPU machine, it must not inherit), and the suite's local
    plugin file (whose classes cannot be pickled by name) is loaded again inside it."""
    from harness.events import EpochEnd, RunEvents
    from harness.worker import START_METHOD, WorkerOptions, work

    assert START_METHOD == "forkserver"
    record = tmp_path / "record.txt"
    monkeypatch.setenv("HARNESS_TEST_RECORD", str(record))
    monkeypatch.setenv("HARNESS_FAKE_GPUS", "1")
    path = recording_suite(tmp_path, seeds="[0]", epochs=1)
    suite = load_suite(path, load_registry())
    plans = make_plan(suite)
    book = TrialBook(open_storage(f"sqlite:///{tmp_path / 'storage.db'}"), plans)
    options = WorkerOptions(runs_dir=tmp_path / "runs", data_root=tmp_path / "data", suite_path=path, threads=1,
                            gpus=visible_gpus())
    class Recorder(RunEvents):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def device_chosen(self, plan: Any, trial: str, device: str) -> None:
            self.seen.append(device)

        def epoch_ended(self, plan: Any, trial: str, end: EpochEnd) -> None:
            self.seen.append(f"epoch {end.epoch}/{end.epochs}")

    recorder = Recorder()
    assert work(book, options, recorder) == 1
    (trial,) = list(book.trials(plans[0]))
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert trial.user_attrs["device"] == "cuda:0"
    assert recorder.seen == ["cuda:0", "epoch 1/1"], "the device, then the trial process's epochs, come back"
    (entry,) = records(record).values()
    assert entry["visible"] == "0"
    assert entry["ppid"] != os.getpid(), "the trial was forked from the worker"
    assert "forkserver" in Path(f"/proc/{entry['ppid']}/cmdline").read_text()


def test_status_shows_the_device_of_each_running_trial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_suite(tmp_path, seeds="[0, 1]")
    suite = load_suite(path, load_registry())
    url = f"sqlite:///{tmp_path / 'storage.db'}"
    book = TrialBook(open_storage(url), make_plan(suite))
    book.sync()
    claim = book.claim()
    book.set_attr(claim, "device", "cuda:1,3")
    assert cli.main(["status", str(path), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "2 planned trial(s); 1 running, 1 waiting" in out
    assert f"running: spiral · batchnorm · seed {claim.seed} on cuda:1,3" in out


def test_a_trial_ends_with_its_killed_worker(tmp_path: Path) -> None:
    """Trial processes hang off the fork server, not the worker: when the worker is killed (the
    OOM killer, kill -9 of its pid alone), the fork server ends and takes the trial with it, so
    nothing goes on writing into the run directory that the next worker resumes from."""
    import signal
    import subprocess
    import sys

    suite = recording_suite(tmp_path, seeds="[0]", epochs=1)
    # one long epoch: the trial sends the worker nothing for a while (a dead pipe would stop it too)
    suite.write_text(suite.read_text().replace("\npoints_per_class = 24", "\npoints_per_class = 40000"))
    record = tmp_path / "record.txt"
    env = {**os.environ, "HARNESS_FAKE_GPUS": "1", "HARNESS_TEST_RECORD": str(record)}
    run = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--quiet"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (record.is_file() and records(record)):  # the trial is training
            assert run.poll() is None and time.monotonic() < deadline, "the trial never started"
            time.sleep(0.2)
        (trial,) = records(record)
        run.kill()
        run.wait()
        killed = time.monotonic()
        while Path(f"/proc/{trial}").exists() and "Z" not in _state(trial):
            assert time.monotonic() < killed + 15, "the trial outlived its worker"
            time.sleep(0.2)
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
