"""The search phase of a comparison: Optuna's samplers and pruners as a suite's ``[search]``
names them, the points of a grid, and the point of a claimed search trial.

Search trials are slots enqueued in the comparison's search study (exactly ``trials`` of them,
so any number of workers never overshoot); a worker that claims one asks the sampler for its
point there (a grid's points are fixed on the slots as they are enqueued). They are scored on
the validation split, never the test split. Once every slot has finished, the best point
becomes the setting of the comparison's final trials.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from .seeds import derived_seed
from .suite import SearchSection


def sampler(search: SearchSection, space: dict[str, BaseDistribution], trial_number: int,
            ) -> optuna.samplers.BaseSampler:
    """The suite's sampler for one trial. Seeded from (search seed, trial number): workers that
    sample at once draw different points, and a search repeats as a whole; what TPE and CMA-ES
    learn lives in the storage, not in the sampler object."""
    seed = derived_seed(search.seed, trial_number)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":  # the points are fixed on the slots (grid_points); nothing to sample
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def pruner(search: SearchSection, epochs: int) -> optuna.pruners.BasePruner:
    """Median: stop a trial whose validation metric is below the median of earlier trials at the
    same epoch, once four trials have finished and after the first fifth of its ``epochs`` (earlier
    epochs rank slow starters, e.g. a high learning rate under a cosine schedule, too low).
    Hyperband: successive halving over the epochs."""
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, epochs // 5))
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def grid_points(search: SearchSection, space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """A grid search's points, one per slot: every combination of the keys' choices, in an order
    shuffled by the search seed (a search of fewer trials than points takes the first)."""
    keys = list(space)
    points = [dict(zip(keys, values, strict=True))
              for values in itertools.product(*(space[key].choices for key in keys))]
    random.Random(search.seed).shuffle(points)
    return points


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The sampler's point for a claimed trial, recorded on it."""
    for key, found in space.items():
        if isinstance(found, CategoricalDistribution):
            trial.suggest_categorical(key, found.choices)
        elif isinstance(found, IntDistribution):
            trial.suggest_int(key, found.low, found.high, log=found.log)
        elif isinstance(found, FloatDistribution):
            trial.suggest_float(key, found.low, found.high, log=found.log)
    return dict(trial.params)


def best_params(study: optuna.Study) -> dict[str, Any] | None:
    """The best completed search trial's point; None when none completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial.params if complete else None
