"""Plugin discovery as a third party sees it: entry points loaded one by one, a broken plugin
reported while the rest work, duplicates named, plugins disabled by environment, local files."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SCALED_BN, run_cli, write_suite


@pytest.fixture
def third_party(tmp_path: Path) -> dict[str, str]:
    """An installed distribution (a dist-info on PYTHONPATH) with a broken and a clashing plugin."""
    site = tmp_path / "site"
    info = site / "thirdparty-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[harness]\nbroken = thirdparty_broken\nclash = thirdparty_clash\nextra = thirdparty_extra\n")
    (site / "thirdparty_broken.py").write_text("raise RuntimeError('boom at import')\n")
    (site / "thirdparty_clash.py").write_text(
        "from harness import Norm, hookimpl\n"
        "@hookimpl\n"
        "def harness_register_norms(register):\n"
        "    register(Norm(name='batchnorm', make='torch.nn:BatchNorm2d', summary='a second batchnorm'))\n")
    (site / "thirdparty_extra.py").write_text(
        "from harness import Norm, hookimpl\n"
        "@hookimpl\n"
        "def harness_register_norms(register):\n"
        "    register(Norm(name='extra_norm', make='torch.nn:BatchNorm2d', summary='from a package'))\n")
    return {"PYTHONPATH": str(site)}


def test_plugins_lists_every_plugin_and_the_broken_one(third_party: dict[str, str], workdir: Path) -> None:
    result = run_cli("plugins", cwd=workdir, env={**third_party, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "baseline_norms" in out and "harness_register_norms" in out
    assert "toy" in out and "harness_register_tasks" in out
    assert "broken" in out and "RuntimeError: boom at import" in out
    assert "thirdparty" in out and "1.0" in out
    assert "conflict" in out and "'batchnorm'" in out and "thirdparty_clash" in out


def test_a_broken_plugin_does_not_hide_the_others(third_party: dict[str, str], workdir: Path) -> None:
    result = run_cli("list", "norms", cwd=workdir, env=third_party)
    assert result.returncode == 0
    for name in ("batchnorm", "groupnorm", "layernorm", "instancenorm", "none", "extra_norm"):
        assert name in result.stdout
    assert "failed to load: broken" in result.stderr


def test_duplicate_name_is_an_error_naming_both_sources(third_party: dict[str, str], workdir: Path) -> None:
    suite = write_suite(workdir.parent)
    result = run_cli("check", str(suite), cwd=workdir, env=third_party)
    assert result.returncode == 2
    assert "norm 'batchnorm' is registered twice" in result.stderr
    assert "harness_plugins.norms" in result.stderr and "thirdparty_clash" in result.stderr
    assert "Traceback" not in result.stderr


def test_disabling_a_plugin_by_environment(third_party: dict[str, str], workdir: Path) -> None:
    suite = write_suite(workdir.parent)
    env = {**third_party, "HARNESS_DISABLE_PLUGINS": "clash, broken"}
    assert run_cli("check", str(suite), cwd=workdir, env=env).returncode == 0
    listing = run_cli("plugins", cwd=workdir, env={**env, "COLUMNS": "300"})
    assert listing.stdout.count("disabled") == 2
    assert "boom" not in listing.stdout


def test_a_suite_loads_a_local_plugin_file(workdir: Path) -> None:
    (workdir.parent / "my_norm.py").write_text(SCALED_BN)
    suite = write_suite(workdir.parent, header='plugins = ["my_norm.py"]\n', body="""
        [[norm]]
        use = "scaled_bn"
        factor = 0.25
    """)
    assert run_cli("check", str(suite), cwd=workdir).returncode == 0
    bad = write_suite(workdir.parent, name="bad", header='plugins = ["my_norm.py"]\n', body="""
        [[norm]]
        use = "scaled_bn"
        factr = 0.25
    """)
    result = run_cli("check", str(bad), cwd=workdir)
    assert result.returncode == 2
    assert "norm[2].factr: unknown key (did you mean 'factor'?); allowed: factor" in result.stderr


def test_a_local_plugin_file_that_fails_to_import(workdir: Path) -> None:
    (workdir.parent / "broken.py").write_text("import not_a_module\n")
    suite = write_suite(workdir.parent, header='plugins = ["broken.py"]\n')
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 2
    assert "plugins[1]: plugin file 'broken.py' failed to load: ModuleNotFoundError" in result.stderr


BUILT_IN_ENTRY_POINTS = sorted(ep.value for ep in importlib.metadata.entry_points(group="harness")
                               if ep.value.startswith("harness_plugins."))


def test_every_built_in_plugin_is_an_entry_point() -> None:
    assert len(BUILT_IN_ENTRY_POINTS) >= 6, BUILT_IN_ENTRY_POINTS


@pytest.mark.parametrize("module", BUILT_IN_ENTRY_POINTS)
def test_registration_imports_no_torch(module: str) -> None:
    """Each built-in entry point registers without torch, mmengine or timm (``harness list`` and
    ``harness check`` stay fast): the modules are imported on first use inside a trial."""
    code = (f"import sys, {module}; heavy = {{'torch', 'mmengine', 'timm'}} & set(sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_registration_check_sees_torch() -> None:
    """The check above can fail: a module that imports torch is caught."""
    code = "import sys, harness_plugins.norms.baselines; assert not {'torch'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0


def test_listing_and_checking_import_no_torch(workdir: Path) -> None:
    suite = write_suite(workdir.parent)
    code = ("import sys; from harness.cli import main; main(['list', 'norms']); main(['list', 'tasks']); "
            f"main(['check', {str(suite)!r}]); main(['check', {str(REPO / 'suites' / 'cifar10.toml')!r}]); "
            "heavy = {'torch', 'mmengine', 'timm'} & set(sys.modules); "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 0, result.stderr



def test_listing_one_norm_shows_its_config(workdir: Path) -> None:
    """``harness list norms NAME`` reads the norm's config model: keys, defaults, bounds, search ranges."""
    result = run_cli("list", "norms", "batchnorm", cwd=workdir, env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["momentum"][:4] == ["float", "0.1", "> 0 ≤ 1", "0.01..0.5 log"], rows
    assert rows["projection"][:2] == ["bool", "False"] and "projection" in result.stdout.splitlines()[-1]
    unknown = run_cli("list", "norms", "batchnrom", cwd=workdir)
    assert unknown.returncode == 2 and "unknown norm 'batchnrom' (did you mean 'batchnorm'" in unknown.stderr


def test_the_readmes_norm_plugin_passes_the_conformance_kit(workdir: Path) -> None:
    """The plugin example a newcomer copies from the README registers and conforms as written."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Writing a norm plugin"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    (workdir / "my_norm.py").write_text(code)
    result = run_cli("check-norm", "scaled_bn", "--plugin", "my_norm.py", "--param", "factor=0.25", cwd=workdir,
                     env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and result.stdout.count("ok") >= 6
    bad = run_cli("check-norm", "scaled_bn", "--plugin", "my_norm.py", "--param", "factor=-1", cwd=workdir)
    assert bad.returncode == 2 and "--param.factor: Input should be greater than 0" in bad.stderr, bad.stderr
