"""Bad suites are refused by `harness check` and `harness run` with exit 2, the file and the key
named, no traceback, and nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli, write_suite

CASES = {
    "malformed TOML": ('[suite\nname = "x"\n', None, "not valid TOML"),
    "unknown top-level key": ("", "colour = 'red'\n", "colour: unknown key"),
    "unknown suite key": ("", None, "suite.seed: unknown key"),
    "unknown task key": ("", None, "task.epoch: unknown key (did you mean 'epochs'?)"),
    "unknown norm": ("", None, "norm[2].use: unknown norm 'batchnrom'"),
    "unknown norm parameter": ("", None, "norm[2].group: unknown key (did you mean 'groups'?); allowed: eps, groups"),
    "norm parameter of the wrong type": ("", None, 'norm[2].momentum: Input should be a valid number (got "0.1")'),
    "norm parameter out of range": ("", None, "norm[2].eps: Input should be greater than 0 (got 0)"),
    "wrong type": ("", None, "task.epochs: Input should be a valid integer"),
    "unknown task": ("", None, "task.use: unknown task 'toys' (did you mean 'toy'?)"),
    "metric the task lacks": ("", None, "suite.metric: task 'toy' has no metric 'top1'"),
    "baseline not among norms": ("", None, "suite.baseline: 'groupnorm' is not one of the suite's norms"),
    "norm that does not fit the task": ("", None, "norm[2].use: norm 'instancenorm' does not support 1d"),
    "same norm twice without label": ("", None, "norm[2].label: label 'batchnorm' is already used"),
    "missing plugin file": ("", None, "plugins[1]: plugin file 'nope.py' not found"),
    "parameter outside its choices": ("", None, "norm[2].groups: Input should be 1, 2, 4, 8, 16 or 32 (got 3)"),
    # Reading never raises.
    "not UTF-8": ("", None, ": not a UTF-8 text file (byte "),
    "nested too deeply": ("", None, ": arrays or tables nested too deeply to read"),
    "plugin raising SystemExit": ("", None, "plugins[1]: plugin file 'boom.py' failed to load: SystemExit: 3"),
    "plugin raising KeyboardInterrupt":
        ("", None, "plugins[1]: plugin file 'boom.py' failed to load: KeyboardInterrupt"),
    "plugin path in a symlink loop": ("", None, "plugins[1]: plugin file 'loop.py' cannot be resolved"),
    # TOML types are kept: no coercion.
    "boolean for a number": ("", None, "task.batch_size: Input should be a valid integer (got true)"),
    "word for a boolean": ("", None, 'task.optimizer.nesterov: Input should be a valid boolean (got "off")'),
    "quoted seed": ("", None, 'suite.seeds[1]: Input should be a valid integer (got "0")'),
    "boolean version": ("", None, "suite.version: Input should be a valid integer (got true)"),
    # Values in range.
    "negative seed": ("", None, "suite.seeds[1]: Input should be greater than or equal to 0 (got -1)"),
    "seed of 2^32": ("", None, "suite.seeds[1]: Input should be less than 4294967296"),
    "NaN learning rate": ("", None, "task.optimizer.lr: Input should be a finite number"),
    "beta of 1": ("", None, "task.optimizer.betas[1]: Input should be less than 1 (got 1.0)"),
    "milestone beyond the epochs": ("", None, "schedule.milestones [5] are not below epochs = 2"),
    "infinite noise": ("", None, "task.noise: Input should be a finite number"),
    "norm momentum of 5": ("", None, "norm[2].momentum: Input should be less than or equal to 1 (got 5)"),
    "NaN norm eps": ("", None, "norm[2].eps: Input should be a finite number"),
    # Rules that do nothing.
    "repeated matrix value": ("", None, "matrix: Value error, axis 'batch_size' repeats 8: its trials would run"),
    "exclusion matching nothing": ("", None, "exclude[1]: matches no planned trial"),
    "exclusions leaving no trial": ("", None, "exclude: the [[exclude]] rules leave no trial to run"),
    # Names and places.
    "suite name too long for a file": ("", None, "suite.name: String should have at most 100 characters"),
    "storage that is not a URL": ("", None, "suite.storage: Value error, not an SQLAlchemy URL"),
    "storage of an unknown dialect": ("", None, "suite.storage: Value error, unknown database dialect 'nosuchdb'"),
    "data root that is a file": ("", None, "suite.data_root: 'bad.toml' is a file"),
}


def make_bad_suite(directory: Path, case: str) -> Path:
    good = write_suite(directory, name="bad")
    text = good.read_text()
    edits = {
        "malformed TOML": lambda t: CASES[case][0] + t,
        "unknown top-level key": lambda t: "colour = 'red'\n" + t,
        "unknown suite key": lambda t: t.replace("version = 1", "version = 1\nseed = 3"),
        "unknown task key": lambda t: t.replace("epochs = 2", "epoch = 2"),
        "unknown norm": lambda t: t + '\n[[norm]]\nuse = "batchnrom"\n',
        "unknown norm parameter": lambda t: t + '\n[[norm]]\nuse = "groupnorm"\ngroup = 4\n',
        "norm parameter of the wrong type":
            lambda t: t + '\n[[norm]]\nuse = "batchnorm"\nlabel = "bn2"\nmomentum = "0.1"\n',
        "norm parameter out of range": lambda t: t + '\n[[norm]]\nuse = "batchnorm"\nlabel = "bn2"\neps = 0\n',
        "wrong type": lambda t: t.replace("epochs = 2", 'epochs = "three"'),
        "unknown task": lambda t: t.replace('use = "toy"', 'use = "toys"'),
        "metric the task lacks": lambda t: t.replace('metric = "accuracy"', 'metric = "top1"'),
        "baseline not among norms": lambda t: t.replace('baseline = "batchnorm"', 'baseline = "groupnorm"'),
        "norm that does not fit the task": lambda t: t + '\n[[norm]]\nuse = "instancenorm"\n',
        "same norm twice without label": lambda t: t + '\n[[norm]]\nuse = "batchnorm"\nmomentum = 0.2\n',
        "missing plugin file": lambda t: 'plugins = ["nope.py"]\n' + t,
        "parameter outside its choices": lambda t: t + '\n[[norm]]\nuse = "groupnorm"\ngroups = 3\n',
        "not UTF-8": lambda t: t.replace('name = "bad"', 'name = "b\xe4d"').encode("latin-1"),
        "nested too deeply": lambda t: t + "\n[extra]\nx = " + "[" * 5000 + "]" * 5000 + "\n",
        "plugin raising SystemExit": lambda t: 'plugins = ["boom.py"]\n' + t,
        "plugin raising KeyboardInterrupt": lambda t: 'plugins = ["boom.py"]\n' + t,
        "plugin path in a symlink loop": lambda t: 'plugins = ["loop.py"]\n' + t,
        "boolean for a number": lambda t: t.replace("batch_size = 16", "batch_size = true"),
        "word for a boolean": lambda t: t.replace("noise = 0.2", 'noise = 0.2\noptimizer = { nesterov = "off" }'),
        "quoted seed": lambda t: t.replace("seeds = [0, 1]", 'seeds = ["0"]'),
        "boolean version": lambda t: t.replace("version = 1", "version = true"),
        "negative seed": lambda t: t.replace("seeds = [0, 1]", "seeds = [-1]"),
        "seed of 2^32": lambda t: t.replace("seeds = [0, 1]", "seeds = [4294967296]"),
        "NaN learning rate": lambda t: t.replace("noise = 0.2", "noise = 0.2\noptimizer = { lr = nan }"),
        "beta of 1":
            lambda t: t.replace("noise = 0.2", 'noise = 0.2\noptimizer = { name = "adam", betas = [1.0, 0.9] }'),
        "milestone beyond the epochs":
            lambda t: t.replace("noise = 0.2", 'noise = 0.2\nschedule = { name = "multistep", milestones = [5] }'),
        "infinite noise": lambda t: t.replace("noise = 0.2", "noise = inf"),
        "norm momentum of 5": lambda t: t + '\n[[norm]]\nuse = "batchnorm"\nlabel = "bn2"\nmomentum = 5\n',
        "NaN norm eps": lambda t: t + '\n[[norm]]\nuse = "batchnorm"\nlabel = "bn2"\neps = nan\n',
        "repeated matrix value": lambda t: t + "\n[matrix]\nbatch_size = [8, 16, 8]\n",
        "exclusion matching nothing": lambda t: t + '\n[[norm]]\nuse = "groupnorm"\n\n[[exclude]]\nnorm = "gropnorm"\n',
        "exclusions leaving no trial": lambda t: t + '\n[[exclude]]\nnorm = "batchnorm"\n',
        "suite name too long for a file": lambda t: t.replace('name = "bad"', f'name = "{"x" * 300}"'),
        "storage that is not a URL": lambda t: t.replace("version = 1", 'version = 1\nstorage = "runs here"'),
        "storage of an unknown dialect":
            lambda t: t.replace("version = 1", 'version = 1\nstorage = "nosuchdb://host/db"'),
        "data root that is a file": lambda t: t.replace("version = 1", 'version = 1\ndata_root = "bad.toml"'),
    }
    (directory / "boom.py").write_text("raise KeyboardInterrupt\n" if "KeyboardInterrupt" in case else
                                       "raise SystemExit(3)\n")
    loop = directory / "loop.py"
    if not loop.is_symlink():
        loop.symlink_to(directory / "loop2.py")
        (directory / "loop2.py").symlink_to(loop)
    edited = edits[case](text)
    good.write_bytes(edited) if isinstance(edited, bytes) else good.write_text(edited)
    return good


# `run` validates through the same code as `check`; these cases prove it refuses before storing.
RUN_CASES = ["malformed TOML", "unknown norm", "wrong type", "norm that does not fit the task",
             "plugin raising SystemExit", "exclusions leaving no trial"]


@pytest.mark.parametrize(("command", "case"), [("check", c) for c in sorted(CASES)] + [("run", c) for c in RUN_CASES])
def test_bad_suite_exits_2_naming_file_and_key(case: str, command: str, workdir: Path) -> None:
    suite = make_bad_suite(workdir.parent, case)
    result = run_cli(command, str(suite), cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert str(suite) in result.stderr
    assert CASES[case][2] in result.stderr, result.stderr
    assert list(workdir.iterdir()) == [], "a refused suite must leave nothing behind"


def test_every_problem_is_reported_at_once(workdir: Path) -> None:
    suite = write_suite(workdir.parent, norms=("batchnorm", "batchnrom", "groupnorm"))
    suite.write_text(suite.read_text().replace("epochs = 2", "epochs = 0") + "\ngroup = 2\n")
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 2
    prefix = f"error: {suite}: "
    keys = [line[len(prefix):].split(":")[0] for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert keys == ["task.epochs", "norm[2].use", "norm[3].group"], result.stderr
    assert "unknown norm 'batchnrom' (did you mean 'batchnorm'" in result.stderr
    assert "unknown key (did you mean 'groups'?)" in result.stderr


def test_missing_suite_file(workdir: Path) -> None:
    result = run_cli("check", "nowhere.toml", cwd=workdir)
    assert result.returncode == 2
    assert "nowhere.toml: cannot read the suite file" in result.stderr


def test_good_suite_checks_and_counts_trials(workdir: Path) -> None:
    suite = write_suite(workdir.parent, norms=("batchnorm", "groupnorm"), body="""
        [matrix]
        batch_size = [8, 16]
        [search]
        trials = 4
        space = { "optimizer.lr" = { low = 0.001, high = 0.1, log = true } }
    """)
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "2 variant(s) x 2 norm(s), 4 comparison(s) x 2 seed(s) = 8 trial(s)" in result.stdout


def test_search_space_keys_are_checked(workdir: Path) -> None:
    suite = write_suite(workdir.parent, body="""
        [search]
        trials = 4
        space = { "optimizer.lrate" = { low = 0.001, high = 0.1 } }
    """)
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 2
    assert "search.space.optimizer.lrate" in result.stderr


def test_hundreds_of_problems_print_the_first_twenty_and_a_count(workdir: Path) -> None:
    suite = write_suite(workdir.parent)
    suite.write_text(suite.read_text().replace("noise = 0.2", "noise = 0.2\n" + "".join(
        f"typo_{i} = {i}\n" for i in range(400))))
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 21 and all(f"{suite}: task.typo_" in line for line in lines[:20]), lines[:3]
    assert lines[-1] == "error: … and 380 more problem(s) like these"
