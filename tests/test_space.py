"""The ``[search]`` space of one (task variant, norm): Optuna distributions whose types and limits
are those of the config models, and sampled points turned back into validated configs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from harness.plugins import load_registry
from harness.space import SpaceErrors, resolve_space
from harness.suite.schema import SearchRange
from harness_plugins.tasks.toy import ToyConfig

from conftest import run_cli, write_suite

REGISTRY = load_registry()


def ranges(**given: dict) -> dict[str, SearchRange]:
    return {key.replace("__", "."): SearchRange(**value) for key, value in given.items()}


def test_task_keys_suite_ranges_and_a_norms_declared_range() -> None:
    batchnorm = REGISTRY.norms["batchnorm"]
    space = resolve_space(ranges(optimizer__lr={"low": 1e-3, "high": 0.5, "log": True}, epochs={"low": 1, "high": 4},
                                 norm__momentum={}, schedule__name={"choices": ["cosine", "multistep"]}),
                          ToyConfig(), batchnorm.config())
    declared = batchnorm.config.search_space()["momentum"]
    assert space.distributions == {
        "optimizer.lr": FloatDistribution(1e-3, 0.5, log=True),
        "epochs": IntDistribution(1, 4),
        "norm.momentum": FloatDistribution(declared.low, declared.high, log=declared.log),
        "schedule.name": CategoricalDistribution(["cosine", "multistep"]),
    }
    task, norm = space.configs({"optimizer.lr": 0.02, "epochs": 3, "norm.momentum": 0.2, "schedule.name": "multistep"},
                               ToyConfig(noise=0.3), batchnorm.config(eps=1e-3))
    assert (task.optimizer.lr, task.epochs, task.schedule.name, task.noise) == (0.02, 3, "multistep", 0.3)
    assert (norm.momentum, norm.eps) == (0.2, 1e-3)
    assert type(task) is ToyConfig


def test_a_norm_key_applies_only_to_norms_that_have_the_parameter() -> None:
    space = resolve_space(ranges(norm__groups={"choices": [2, 4]}), ToyConfig(), REGISTRY.norms["batchnorm"].config())
    assert space.distributions == {}
    space = resolve_space(ranges(norm__groups={"choices": [2, 4]}), ToyConfig(), REGISTRY.norms["groupnorm"].config())
    assert space.distributions == {"norm.groups": CategoricalDistribution([2, 4])}


BAD = {
    "optimizer.lrate": ({"low": 1e-3, "high": 0.1}, "'lrate' is not a key of OptimizerConfig"),
    "optimizer.momentun": ({"low": 0.5, "high": 0.9}, "'momentun' is not a key of OptimizerConfig (did you "
                                                      "mean 'momentum'?)"),
    "optimizer.lr": ({"low": 0.0, "high": 0.1}, "0.0 is not a valid 'optimizer.lr': Input should be greater than 0"),
    "optimizer.momentum": ({"low": 0.5, "high": 1.5}, "1.5 is not a valid 'optimizer.momentum'"),
    "epochs": ({"low": 1.5, "high": 3}, "'epochs' is an integer; give integer low and high"),
    "optimizer.name": ({"low": 1, "high": 2}, "'optimizer.name' is not a number; give choices"),
    "schedule.name": ({"choices": ["cosine", "linear"]}, "'linear' is not a valid 'schedule.name'"),
    "norm.eps": ({}, "declares no search range for 'eps'"),
    "batch_size": ({}, "give low and high, or choices"),
}


@pytest.mark.parametrize("key", list(BAD))
def test_a_key_that_cannot_be_searched_is_named_with_the_reason(key: str) -> None:
    given, message = BAD[key]
    with pytest.raises(SpaceErrors) as raised:
        resolve_space({key: SearchRange(**given)}, ToyConfig(), REGISTRY.norms["batchnorm"].config())
    [error] = raised.value.errors
    assert error.key == key and message in str(error)


def test_the_grid_sampler_needs_choices_for_every_key() -> None:
    with pytest.raises(SpaceErrors, match="the grid sampler needs choices"):
        resolve_space(ranges(optimizer__lr={"low": 1e-3, "high": 0.1}), ToyConfig(),
                      REGISTRY.norms["batchnorm"].config(), grid=True)


@pytest.mark.parametrize("name", sorted(REGISTRY.norms))
def test_every_norms_declared_ranges_sample_valid_configs(name: str) -> None:
    """What a norm declares (``Search`` on a field, a Literal's values) is searchable as declared:
    every sampled point is a valid config of that norm."""
    norm = REGISTRY.norms[name]
    declared = {f"norm.{key}": SearchRange() for key in norm.config.search_space()}
    space = resolve_space(declared, ToyConfig(), norm.config())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask(space.distributions)
        _, config = space.configs(trial.params, ToyConfig(), norm.config())
        assert {f"norm.{k}": v for k, v in config.model_dump().items() if f"norm.{k}" in trial.params} == trial.params
        study.tell(trial, 0.0)


def test_check_names_every_bad_key_and_creates_nothing(workdir: Path) -> None:
    suite = write_suite(workdir.parent, norms=("batchnorm", "groupnorm"), body="""
        [search]
        trials = 4
        sampler = "grid"
        [search.space]
        "optimizer.lr" = { low = 0.001, high = 0.1 }
        "norm.nothing" = { choices = [1] }
        "norm.groups" = { choices = [3] }
    """)
    result = run_cli("run", str(suite), cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for key in ("search.space.optimizer.lr: the grid sampler needs choices",
                "search.space.norm.nothing: no norm of this suite has a parameter 'nothing'",
                "search.space.norm.groups: 3 is not a valid 'groups'"):
        assert key in result.stderr, result.stderr
    assert list(workdir.iterdir()) == []
