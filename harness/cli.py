"""The ``harness`` command: run | status | check | leaderboard | list | plugins.

Start-up stays light (argparse, no torch): heavy modules are imported by the commands that
train. Bad input ends with the problems listed, exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .atomic import finish_interrupted_writes
from .errors import UserError

EXAMPLES = """examples:
  harness run suites/quickstart.toml          run a suite (resumes if run before)
  harness run suites/cifar10.toml --workers 2  two worker processes share one storage
  harness check suites/imagenet.toml          validate only; nothing trains
  harness list norms                          every norm a suite can use
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Fair, tuned, multi-seed benchmarks of normalization layers.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def suite_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("suite", type=Path, help="the suite file (TOML)")
        p.add_argument("--out", type=Path, default=Path("."),
                       help="where runs/ and leaderboard/ are written (default: the current directory)")
        p.add_argument("--storage", help="an SQLAlchemy URL for the trial storage "
                       "(default: the suite's [suite] storage, else runs/<suite>/storage.db)")
        return p

    run = suite_command("run", "run a suite's missing trials and write its leaderboard")
    run.add_argument("--workers", type=int,
                     help="worker processes on this machine (default: one per GPU used, 1 without GPUs)")
    run.add_argument("--gpus", metavar="LIST",
                     help="the GPUs to use, as indices such as 0,2 (default: every visible GPU; "
                     "CUDA_VISIBLE_DEVICES is respected)")
    run.add_argument("--threads", type=int, help="torch threads per trial (default: cores / workers)")
    run.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    run.add_argument("--heartbeat", type=int, default=30,
                     help="seconds between heartbeats; a trial silent for two is taken as dead (default 30)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--smoke", action="store_true",
                     help="run the suite end to end on tiny generated data (one epoch, one seed) under the "
                     "name SUITE-smoke, to check it before spending real compute")
    run.add_argument("--worker-only", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    suite_command("status", "show how many trials of a suite are done, running, waiting or failed")
    check = sub.add_parser("check", help="validate a suite without training",
                           description="validate a suite without training")
    check.add_argument("suite", type=Path)
    check.add_argument("--build", action="store_true",
                       help="also build every (model, norm) pair and train it one step on a tiny random batch "
                       "on CPU, as `harness run` does before it stores anything")
    board = sub.add_parser(
        "leaderboard", help="write a suite's leaderboard from storage (no training)",
        description="write a suite's leaderboard from storage (no training); several suites, or one suite's "
        "several storages, are merged into one comparison of the task variants they share")
    board.add_argument("suite", type=Path, nargs="+", help="the suite file(s) (TOML)")
    board.add_argument("--out", type=Path, default=Path("."),
                       help="where leaderboard/ is written (default: the current directory)")
    board.add_argument("--storage", action="append", default=[], metavar="URL",
                       help="an SQLAlchemy URL for the trial storage (default: each suite's own); give one for "
                       "all suites, one per suite, or several for one suite to merge its results from each")
    board.add_argument("--format", action="append", metavar="FORMAT",
                       help="write only this format: md, csv, json or html (repeatable; default: all)")
    board.add_argument("--name", help="the merged leaderboard's file name (default: the suites' names joined by +)")
    check_norm = sub.add_parser("check-norm", help="run the conformance kit on a norm",
                                description="run the conformance checks of METHODS.md on a registered norm")
    check_norm.add_argument("norm", help="the norm's registered name")
    check_norm.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                            help="a norm parameter (a TOML value), e.g. --param groups=4")
    check_norm.add_argument("--plugin", action="append", default=[], type=Path, metavar="FILE",
                            help="a local plugin file to load first")
    listing = sub.add_parser("list", help="list the registered norms or tasks")
    listing.add_argument("kind", choices=["norms", "tasks"])
    listing.add_argument("name", nargs="?", help="one norm or task: the keys a suite may set for it, with their "
                         "types, defaults, bounds, search ranges and help")
    sub.add_parser("plugins", help="every plugin: name, version, source, hooks, load errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"harness {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        for problem in exc.problems[:MAX_PROBLEMS]:
            print(f"error: {problem}", file=sys.stderr)
        if len(exc.problems) > MAX_PROBLEMS:
            print(f"error: … and {len(exc.problems) - MAX_PROBLEMS} more problem(s) like these", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130


# -- commands ----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    registry = _registry()
    if args.name:
        return _list_keys(registry, args.kind, args.name)
    table = Table(box=None, pad_edge=False)
    table.add_column(args.kind[:-1], style="bold")
    table.add_column("summary")
    if args.kind == "norms":
        table.add_column("citation", style="dim")
        for name, norm in sorted(registry.norms.items()):
            table.add_row(name, norm.summary, norm.citation)
    else:
        table.add_column("metrics", style="dim")
        for name, task in sorted(registry.tasks.items()):
            unavailable = task.unavailable()
            summary = escape(task.summary) + (f"\n[red]unavailable: {escape(unavailable)}[/red]" if unavailable else "")
            table.add_row(name, summary, ", ".join(f"{m} ({d})" for m, d in task.metrics.items()))
    Console().print(table)
    _warn_failed(registry)
    return 0


def _list_keys(registry: Any, kind: str, name: str) -> int:
    """The keys of one norm's ``[[norm]]`` entry or one task's ``[task]`` table: its config model."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .errors import did_you_mean
    from .norm import Search

    known = registry.norms if kind == "norms" else registry.tasks
    if name not in known:
        raise UserError(_arg_problem("NAME", f"unknown {kind[:-1]} {name!r}{did_you_mean(name, known)}; "
                                     f"available: {', '.join(sorted(known))}"))
    model = known[name].config
    space = model.search_space() if kind == "norms" else {}
    section = "[[norm]]" if kind == "norms" else "[task]"
    table = Table(title=escape(f"{kind[:-1]} {name!r}: the keys of its {section} entry"), title_justify="left")
    for column in ("key", "type", "default", "bounds", "search", "help"):
        table.add_column(column)
    for key, info in model.model_fields.items():
        found = space.get(key)
        search = (f"{found.low}..{found.high}" + (" log" if found.log else "") if isinstance(found, Search)
                  else " | ".join(map(str, found)) if found else "")
        bounds = " ".join(f"{symbol} {getattr(m, attr)}" for m in info.metadata
                          for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
                          if getattr(m, attr, None) is not None)
        kind_name = (info.annotation.__name__ if isinstance(info.annotation, type)
                     else str(info.annotation).replace("typing.", ""))
        table.add_row(key, kind_name, repr(info.default), bounds, search, info.description or "")
    Console().print(table)
    if kind == "norms" and model.protocol_only:
        print(f"read by the norm's protocol only: {', '.join(sorted(model.protocol_only))}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    registry = _registry()
    table = Table(box=None, pad_edge=False)
    for column in ("plugin", "version", "source", "hooks", "status"):
        table.add_column(column)
    for info in registry.plugins.values():
        status = "disabled" if info.disabled else (f"[red]failed: {info.error}[/red]" if info.error else "ok")
        table.add_row(info.name, info.version, info.source, ", ".join(info.hooks), status)
    console = Console()
    console.print(table)
    for c in registry.conflicts:
        console.print(f"[red]conflict[/red]: {c.kind} {c.name!r} is registered by {c.sources[0]} and by {c.sources[1]}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .plan import make_plan

    suite = _suite(args.suite)
    plans = make_plan(suite)
    trials = len(plans) * len(suite.seeds)
    print(f"{args.suite}: ok: suite {suite.name!r}, task {suite.task.name!r}, {len(suite.variants)} variant(s) x "
          f"{len(suite.norms)} norm(s), {len(plans)} comparison(s) x {len(suite.seeds)} seed(s) = {trials} trial(s)")
    for problem in suite.missing_data(_data_root(suite, Path(".").resolve())):
        print(f"warning: {problem} (`harness run` stops here; `harness run --smoke` does not need it)")
    if suite.search is not None:
        from .space import resolve_space

        search = suite.search
        print(f"  [search] {search.trials} trial(s) per comparison on the validation split, {search.sampler} sampler "
              f"(seed {search.seed}), {search.pruner} pruner; then the finals run the best setting. Spaces:")
        for plan in plans:
            space = resolve_space(search.space, plan.variant.config, plan.norm.config, grid=search.sampler == "grid")
            print(f"    {plan.variant.label} / {plan.norm.label}: {space.describe()}")
    if args.build:
        from .preflight import require_buildable

        problems = suite.runtime_problems()
        if problems:
            raise UserError(problems)
        require_buildable(suite, plans, _data_root(suite, Path(".").resolve()), echo=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import leaderboard
    from .devices import select_gpus, visible_gpus
    from .plan import make_plan
    from .preflight import require_buildable
    from .storage import TrialBook, open_storage
    from .worker import WorkerOptions, work

    if args.workers is not None and args.workers < 1:
        raise UserError(_arg_problem("--workers", "must be at least 1"))
    gpus = select_gpus(args.gpus, visible_gpus())  # counted without starting CUDA in this process
    args.workers = args.workers or max(1, len(gpus))
    suite = _suite(args.suite)
    out = args.out.resolve()
    if args.smoke:
        suite = suite.smoke(out / "runs" / f"{suite.name}-smoke" / "data")
        args.storage = None
    data_root = _data_root(suite, out)
    _require_data(suite, data_root)
    plans = make_plan(suite)
    _require_devices(plans, gpus, suite)
    if not args.worker_only:  # every (model, norm) pair trains one step on CPU, or the run stops here (exit 2)
        require_buildable(suite, plans, data_root, echo=not args.quiet)
    created = _require_writable(out)
    url = _storage_url(args, suite)
    try:
        book = TrialBook(open_storage(url, heartbeat=args.heartbeat), plans)
    except UserError:
        import shutil

        for folder in created:  # an unreachable database leaves nothing behind (all in them is this run's)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finish_interrupted_writes(out / "leaderboard")  # a set of files a kill left half-replaced
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    options = WorkerOptions(runs_dir=out / "runs", data_root=data_root, suite_path=args.suite.resolve(),
                            threads=threads, retry_failed=args.retry_failed, smoke=args.smoke, gpus=gpus,
                            home=args.worker_index)
    helpers = [] if args.worker_only else [_spawn_worker(args, url, i, threads) for i in range(1, args.workers)]
    try:
        if args.quiet or args.worker_only:
            work(book, options)
        else:
            from .progress import RunProgress

            with RunProgress(suite, plans, book) as display:
                work(book, options, display)
    finally:
        for helper in helpers:
            if helper.poll() is None:
                helper.wait()
    if args.worker_only:
        return 0
    board = leaderboard.build(leaderboard.Source(suite, plans, book))
    paths = leaderboard.write(board, out / "leaderboard")
    if not args.quiet:
        from .progress import print_summary

        print_summary(board, paths)
    return _unfinished(board, args)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from . import leaderboard
    from .plan import make_plan
    from .storage import TrialBook, open_storage

    unknown = [f for f in args.format or () if f not in leaderboard.FORMATS]
    if unknown:
        raise UserError(_arg_problem("--format", f"unknown format(s) {unknown}; choose from "
                                     f"{list(leaderboard.FORMATS)}"))
    suites = [_suite(path) for path in args.suite]
    pairs = _storage_pairs(suites, args.storage, args.out)
    sources = []
    for suite, url in pairs:
        plans = make_plan(suite)
        sources.append(leaderboard.Source(suite, plans, TrialBook(open_storage(url), plans)))
    board = leaderboard.build(*sources, name=args.name)
    for path in leaderboard.write(board, args.out.resolve() / "leaderboard", args.format or leaderboard.FORMATS):
        print(path)
    return 0


def _storage_pairs(suites: list[Any], urls: list[str], out: Path) -> list[tuple[Any, str]]:
    """Which storage each suite's trials are read from: its own, one for all, one each, or one
    suite from several."""
    from .storage import default_url

    if not urls:
        return [(s, s.storage or default_url(out, s.name)) for s in suites]
    if len(urls) == 1:
        return [(s, urls[0]) for s in suites]
    if len(urls) == len(suites):
        return list(zip(suites, urls, strict=True))
    if len(suites) == 1:
        return [(suites[0], url) for url in urls]
    raise UserError(_arg_problem("--storage", f"got {len(urls)} storages for {len(suites)} suites; give one for "
                                 "all, one per suite (in order), or several for a single suite"))


def cmd_status(args: argparse.Namespace) -> int:
    from collections import Counter

    from .plan import make_plan
    from .storage import TrialBook, open_storage

    suite = _suite(args.suite)
    plans = make_plan(suite)
    book = TrialBook(open_storage(_storage_url(args, suite)), plans)
    counts: Counter[str] = Counter()
    for plan in plans:
        seen = {t.user_attrs.get("seed") for t in book.trials(plan)}
        counts.update(t.state.name.lower() for t in book.trials(plan))
        counts["not started"] += len(set(plan.seeds) - seen)
    total = len(plans) * len(suite.seeds)
    print(f"{suite.name}: {total} planned trial(s); " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if n))
    _print_phases(plans, book)
    for plan in plans:
        for t in [*book.trials(plan, search=True), *book.trials(plan)]:
            if t.state.name == "RUNNING":
                attrs = t.user_attrs
                which = f"search slot {attrs['slot'] + 1}" if "slot" in attrs else f"seed {attrs.get('seed')}"
                print(f"  running: {plan.variant.label} · {plan.norm.label} · {which} on "
                      f"{attrs.get('device', 'a device not yet chosen')} (worker {attrs.get('worker', '?')})")
    return 0


def _print_phases(plans: list[Any], book: Any) -> None:
    """Per (variant, norm) and phase (search, finals): trials by state, and the best value so far
    (a search's on the validation split; the finals' mean on the test split)."""
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    table = Table("variant", "norm", "phase", "complete", "running", "pruned", "failed", "waiting", "value",
                  box=None, pad_edge=False)
    for plan in plans:
        phases = [("search", plan.search.trials, True)] if plan.search is not None else []
        for phase, planned, search in [*phases, ("finals", len(plan.seeds), False)]:
            trials = [t for t in book.trials(plan, search) if t.user_attrs.get("fail_kind") != "duplicate"]
            states = Counter(t.state.name.lower() for t in trials)
            values = [t.value for t in trials if t.state.name == "COMPLETE"]
            started = {t.user_attrs.get("slot" if search else "seed") for t in trials}
            waiting = states["waiting"] + planned - len(started)
            value = ((max if plan.direction == "max" else min)(values) if search else sum(values) / len(values)) \
                if values else None
            shown = "–" if value is None else f"{'best val' if search else 'mean test'} {value:.4g}"
            table.add_row(plan.variant.label, plan.norm.label, phase, str(states["complete"]), str(states["running"]),
                          str(states["pruned"]), str(states["fail"]), str(waiting), shown)
    Console(width=160).print(table)


def cmd_check_norm(args: argparse.Namespace) -> int:
    import tomllib

    from pydantic import ValidationError
    from rich.console import Console
    from rich.table import Table

    from .errors import Problem, did_you_mean
    from .suite import problems

    registry = _registry()
    for file in args.plugin:
        try:
            registry.load_file(file)
        except Exception as exc:  # noqa: BLE001 - user code
            message = f"plugin file failed to load: {type(exc).__name__}: {exc}"
            raise UserError(Problem(str(file), "", message)) from None
    if args.norm not in registry.norms:
        known = ", ".join(sorted(registry.norms))
        raise UserError(_arg_problem("NORM", f"unknown norm {args.norm!r}{did_you_mean(args.norm, registry.norms)}; "
                                     f"available: {known}"))
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(_arg_problem("--param", f"{item!r} is not KEY=VALUE"))
        try:
            params[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            params[key] = value
    norm = registry.norms[args.norm]
    try:
        norm.config.model_validate(params)
    except ValidationError as exc:
        raise UserError(problems.of_model("command line", "--param", exc, norm.config)) from None
    from .testing import check_norm

    results = check_norm(norm, params)
    table = Table(title=f"conformance of {args.norm!r}", title_justify="left")
    for column in ("check", "input", "result"):
        table.add_column(column)
    for r in results:
        table.add_row(r.check, r.dim, "[green]ok[/green]" if r.ok else f"[red]FAIL[/red] {r.detail}")
    Console().print(table)
    return 0 if all(r.ok for r in results) else 1


#: Problems printed at once; a file with hundreds (a pasted wrong file, say) shows the first ones.
MAX_PROBLEMS = 20

COMMANDS = {"run": cmd_run, "status": cmd_status, "check": cmd_check, "leaderboard": cmd_leaderboard,
            "list": cmd_list, "plugins": cmd_plugins, "check-norm": cmd_check_norm}


# -- helpers -----------------------------------------------------------------------------------
def _registry() -> Any:
    from .plugins import load_registry

    return load_registry()


def _suite(path: Path) -> Any:
    from .suite import load_suite

    return load_suite(path, _registry())


def _storage_url(args: argparse.Namespace, suite: Any) -> str:
    from .storage import default_url

    return args.storage or suite.storage or default_url(args.out, suite.name)


def _data_root(suite: Any, out: Path) -> Path:
    if suite.data_root:
        return (suite.path.parent / suite.data_root).resolve()
    return Path(os.environ.get("HARNESS_DATA") or out / "data").resolve()


def _require_data(suite: Any, data_root: Path) -> None:
    problems = suite.missing_data(data_root) + suite.runtime_problems()
    if problems:
        raise UserError(problems)


def _require_writable(out: Path) -> list[Path]:
    """The run and leaderboard folders can be written, checked before any trial is claimed (a
    trial must not be left RUNNING, nor hours of training end without a leaderboard). Returns
    the folders it created, innermost first."""
    import tempfile

    created = [p for p in (out / "runs", out / "leaderboard", out, *out.parents) if not p.exists()]
    for folder in (out / "runs", out / "leaderboard"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise UserError(_arg_problem("--out", f"cannot write in {folder} ({exc.strerror or exc}); choose "
                                         "another --out or fix its permissions")) from None
    return created


def _require_devices(plans: list[Any], gpus: list[Any], suite: Any) -> None:
    """A trial with ``devices = N`` needs N of the run's GPUs (without GPUs, N processes on CPU)."""
    needed = max((p.variant.config.devices for p in plans), default=1)
    if gpus and needed > len(gpus):
        raise UserError(_arg_problem("--gpus", f"{suite.path}: [task] devices = {needed}, but this run uses "
                                     f"{len(gpus)} GPU(s); choose more with --gpus or lower devices"))


def _unfinished(board: Any, args: argparse.Namespace) -> int:
    """Exit code 1, with what to do, when a trial of the suite failed or has not finished."""
    failed = sum(len(r.failed) for rows in board.variants.values() for r in rows)
    pending = sum(r.pending for rows in board.variants.values() for r in rows)
    if not failed and not pending:
        return 0
    parts = [f"{failed} trial(s) failed"] if failed else []
    parts += [f"{pending} did not finish"] if pending else []
    retry = " ".join(["harness run", str(args.suite), *(["--smoke"] if args.smoke else []), "--retry-failed"])
    print(f"error: {' and '.join(parts)} (see the leaderboard); `{retry}` runs the failed ones again",
          file=sys.stderr)
    return 1


def _spawn_worker(args: argparse.Namespace, url: str, index: int, threads: int) -> subprocess.Popen[bytes]:
    log_dir = args.out.resolve() / "runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "harness", "run", str(args.suite), "--worker-only", "--storage", url,
               "--out", str(args.out), "--threads", str(threads), "--heartbeat", str(args.heartbeat),
               "--worker-index", str(index)]
    if args.gpus is not None:
        command += ["--gpus", args.gpus]
    if args.retry_failed:
        command.append("--retry-failed")
    if args.smoke:
        command.append("--smoke")
    with open(log_dir / f"worker-{index}.log", "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _arg_problem(key: str, message: str) -> Any:

    from .errors import Problem

    return Problem("command line", key, message)


def _warn_failed(registry: Any) -> None:
    failed = registry.failed()
    if failed:
        names = ", ".join(p.name for p in failed)
        print(f"warning: plugin(s) failed to load: {names} (see `harness plugins`)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
