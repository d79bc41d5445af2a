"""The whole plugin API of the harness: pluggy hook specifications.

A plugin is a module (named in the ``harness`` entry-point group, or listed in a suite's
``plugins = [...]``) that implements some of these hooks with ``@harness.hookimpl``. Each hook
receives a ``register`` callback and calls it once per object it contributes, so a plugin
never builds lists for the harness to merge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .norm import Norm
    from .task import Task

PROJECT = "harness"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def harness_register_norms(register: Callable[[Norm], None]) -> None:
    """Register normalization methods.

    Call ``register(Norm(name=..., make=..., summary=...))`` once per norm. ``make`` may be the
    layer class or a ``"package.module:Attr"`` string, imported when a trial first builds the
    layer; strings keep ``harness list`` and ``harness check`` free of heavy imports.
    A name registered by two plugins is an error that names both.
    """


@hookspec
def harness_register_tasks(register: Callable[[Task], None]) -> None:
    """Register tasks (a data source, a model family, a loss and metrics).

    Call ``register(Task(name=..., make=..., config=..., metrics=...))`` once per task. The
    ``config`` model defines the keys a suite may put in ``[task]``; ``make`` builds the
    run-time side inside a trial (see :class:`harness.task.TaskImpl`).
    """
