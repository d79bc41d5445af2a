"""Generated data written whole or not at all: a reader (another trial, a resumed run) never sees
a half-written data set, and two processes generating the same one at once both end up reading
one complete copy; each set of generator parameters gets a folder of its own. Standard library
only, so that the light (suite) side may use it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_directory(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Create ``directory`` by calling ``fill`` on a temporary sibling and renaming it into place.

    Nothing happens if ``directory`` exists already; if another process renames its copy into
    place first, that copy is kept and ours removed. On any error the temporary directory is
    removed and nothing is left behind. The directory is readable by other users (``mkdtemp``'s
    0700 would hide the data from them). Returns ``directory``.
    """
    directory = Path(directory)
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        fill(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, directory)
        except OSError:
            if not directory.is_dir():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def generated_directory(directory: Path, params: dict[str, Any], fill: Callable[[Path], None]) -> Path:
    """:func:`atomic_directory` for generated data: ``fill`` writes the files, and ``meta.json``
    records the generator's ``params`` next to them."""

    def fill_and_record(tmp: Path) -> None:
        fill(tmp)
        (tmp / "meta.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    return atomic_directory(directory, fill_and_record)


def generated_under(parent: Path, params: dict[str, Any], write: Callable[[Path, dict[str, Any]], Path]) -> Path:
    """``parent/<hash of params>``, one folder per distinct set of generator parameters, written by
    ``write(directory, params)`` unless it is there; a folder whose ``meta.json`` says otherwise
    is refused, never silently read."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    directory = write(Path(parent) / digest[:12], params)
    if json.loads((directory / "meta.json").read_text(encoding="utf-8")) != params:
        raise ValueError(f"{directory}/meta.json does not match the generator's parameters; remove the folder")
    return directory


__all__ = ["atomic_directory", "generated_directory", "generated_under"]
