"""Generated data written whole or not at all: a reader (another trial, a resumed run) never sees
a half-written data set, and two processes generating the same one at once both end up reading
one complete copy. Standard library only, so that the light (suite) side may use it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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


__all__ = ["atomic_directory"]
