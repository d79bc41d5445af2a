"""Files written whole or not at all, alone or as a set, so that a reader (or a killed run) never
sees half of one, nor new and old files of one set side by side."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .locks import file_lock

COMMIT_SUFFIX = ".commit"  # a set's journal: staged file -> final name, written at its commit point
STAGED_SUFFIX = ".new"


def write_text(path: Path, text: str) -> Path:
    """Replace one file: through a temporary file beside it and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_together(directory: Path, texts: dict[str, str]) -> list[Path]:
    """Replace the files ``directory/name`` by ``texts[name]`` as one set.

    Each new file is staged in full first; a journal naming them all, renamed into place, is the
    commit point; then each staged file is renamed over its old one. A kill before the commit
    leaves every old file; after it, :func:`finish_interrupted_writes` (run here and at the start
    of every command that writes the directory) completes the renames, so the set is never
    left mixed. Writers of one directory take turns (a lock on it)."""
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory):
        finish_interrupted_writes(directory, locked=True)
        token = f"{os.getpid()}-{time.time_ns()}"
        staged = {f".{name}.{token}{STAGED_SUFFIX}": name for name in texts}
        for stage, name in staged.items():
            _write_synced(directory / stage, texts[name])
        journal = directory / f".{token}{COMMIT_SUFFIX}"
        _write_synced(journal.with_name(journal.name + ".tmp"), json.dumps(staged))
        os.replace(journal.with_name(journal.name + ".tmp"), journal)
        _sync_directory(directory)
        _apply(journal)
    return [directory / name for name in texts]


def finish_interrupted_writes(directory: Path, locked: bool = False) -> None:
    """Complete every set whose journal was committed when a kill stopped its writer, and remove
    what uncommitted writers left staged."""
    if not directory.is_dir():
        return
    if not locked:
        with file_lock(directory):
            finish_interrupted_writes(directory, locked=True)
        return
    for journal in sorted(directory.glob(f".*{COMMIT_SUFFIX}")):
        _apply(journal)
    for leftover in [*directory.glob(f".*{STAGED_SUFFIX}"), *directory.glob(f".*{COMMIT_SUFFIX}.tmp")]:
        leftover.unlink()


def _apply(journal: Path) -> None:
    for stage, name in json.loads(journal.read_text(encoding="utf-8")).items():
        if (journal.parent / stage).exists():  # not yet renamed when the writer stopped
            os.replace(journal.parent / stage, journal.parent / name)
    _sync_directory(journal.parent)
    journal.unlink()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())


def _sync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (they survive a power cut, not only a kill)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
