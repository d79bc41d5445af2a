"""The plugin manager: finds norms and tasks in entry points and local files, one at a time.

Every entry point of the ``harness`` group is loaded on its own, so a broken plugin is reported
and the others still work (the llm pattern). Built-ins come in through the same group.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .norm import Norm
from .task import Task

ENTRY_POINT_GROUP = "harness"
DISABLE_ENV = "HARNESS_DISABLE_PLUGINS"


@dataclass
class PluginInfo:
    """One plugin as ``harness plugins`` shows it."""

    name: str
    source: str
    version: str = ""
    hooks: list[str] = field(default_factory=list)
    error: str = ""  # a failure to import, validate or run the plugin's hooks
    disabled: bool = False


@dataclass
class Conflict:
    """Two plugins registered the same name; using that name is an error naming both."""

    kind: str
    name: str
    sources: tuple[str, str]


class Registry:
    """The norms and tasks contributed by all loaded plugins, with where each came from."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.norms: dict[str, Norm] = {}
        self.tasks: dict[str, Task] = {}
        self.conflicts: list[Conflict] = []

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self, disabled: Iterable[str] = ()) -> None:
        blocked = set(disabled) | disabled_from_env()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                source=f"entry point {ep.name} = {ep.value}" + (f" ({dist.name})" if dist else ""),
                version=dist.version if dist else "",
            )
            self.plugins[ep.name] = info
            if ep.name in blocked:
                info.disabled = True
                continue
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - any import failure (SystemExit too) is the plugin's
                info.error = _describe(exc)
                continue
            self._add(module, info)

    def load_file(self, path: Path) -> PluginInfo:
        """Load a local plugin file (a suite's ``plugins = [...]``); errors are raised to the caller."""
        path = path.resolve()
        name = f"file:{path}"
        if name in self.plugins:
            return self.plugins[name]
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        module_name = f"harness_local_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # so that fork/pickle by reference work
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        info = PluginInfo(name=name, source=str(path), version="local file")
        self.plugins[name] = info
        self._add(module, info)
        if info.error:
            raise ImportError(info.error)
        return info

    def _add(self, module: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=info.name)
            self.pm.check_pending()
        except Exception as exc:  # noqa: BLE001 - a malformed plugin must not take the others down
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            info.error = _describe(exc)
            return
        info.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(module) or [])
        self._collect(info, "harness_register_norms", self.norms, Norm, "norm")
        self._collect(info, "harness_register_tasks", self.tasks, Task, "task")

    def _collect(self, info: PluginInfo, hook: str, into: dict[str, Any], kind: type, label: str) -> None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name != info.name:
                continue

            def register(obj: Any) -> None:
                if not isinstance(obj, kind):
                    raise TypeError(f"register() takes a harness.{kind.__name__}, got {type(obj).__name__}")
                obj = replace(obj, source=info.source)
                if obj.name in into:
                    self.conflicts.append(Conflict(label, obj.name, (into[obj.name].source, obj.source)))
                    return
                into[obj.name] = obj

            try:
                impl.function(register=register)
            except BaseException as exc:  # noqa: BLE001 - a plugin's hook may raise anything
                info.error = _describe(exc)

    # -- queries ---------------------------------------------------------------------------
    def conflict(self, kind: str, name: str) -> Conflict | None:
        return next((c for c in self.conflicts if c.kind == kind and c.name == name), None)

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


def disabled_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def load_registry(disabled: Iterable[str] = ()) -> Registry:
    registry = Registry()
    registry.load_entry_points(disabled)
    return registry
