"""Files written whole or not at all: through a temporary file beside the target and a rename, so
a reader (or a killed run) never sees half of one."""

from __future__ import annotations

from pathlib import Path


def write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
