"""The ISBI Cell Tracking Challenge layout of a 2-d dataset such as DIC-C2DH-HeLa: which frames are
annotated, and where their image and segmentation lie.

Under the dataset folder, for each sequence ``NN`` (``01``, ``02``)::

    NN/tNNN.tif                   the frames (grey, 8 or 16 bit)
    NN_GT/SEG/man_segNNN.tif      the segmentations of some frames: 16-bit, 0 = background,
                                  1, 2, … = one id per cell

Only frames with a ``man_seg`` file are used (DIC-HeLa: 9 + 11 = 20 of its 168 frames); a frame's
number may have more digits (``t0000.tif``), and the mask's number is matched to it as an integer.
Standard library only: ``missing_data`` uses it without run-time imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SEQUENCE = re.compile(r"^\d{2,}$")
FRAME = re.compile(r"^t(\d+)\.tiff?$")
MASK = re.compile(r"^man_seg(\d+)\.tiff?$")


@dataclass(frozen=True, order=True)
class Frame:
    """One annotated frame: its image and its instance segmentation."""

    sequence: str
    index: int
    image: Path
    mask: Path


def image_path(root: Path, sequence: str, index: int) -> Path:
    return Path(root) / sequence / f"t{index:03d}.tif"


def mask_path(root: Path, sequence: str, index: int) -> Path:
    return Path(root) / f"{sequence}_GT" / "SEG" / f"man_seg{index:03d}.tif"


def layout_help(root: Path) -> str:
    """The expected layout in one line, for messages."""
    root = Path(root)
    return (f"{root}/01/t000.tif … (the frames of sequence 01, grey TIFF) and {root}/01_GT/SEG/man_seg000.tif … "
            "(the segmented frames: 16-bit TIFF, 0 = background, one id > 0 per cell), likewise 02 and 02_GT, as in "
            "the ISBI Cell Tracking Challenge's DIC-C2DH-HeLa training data")


def sequences(root: Path) -> list[str]:
    """The sequences that have segmentations (``NN`` beside ``NN_GT/SEG``), sorted."""
    try:
        names = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and SEQUENCE.match(p.name))
    except OSError:
        return []
    return [name for name in names if (Path(root) / f"{name}_GT" / "SEG").is_dir()]


def missing_parts(root: Path) -> list[str]:
    """What is absent at the top of the layout (a quick look: no file is read)."""
    if not sequences(root):
        return ["a sequence folder NN/ with its NN_GT/SEG/"]
    return []


def annotated_frames(root: Path) -> list[Frame]:
    """Every frame with a segmentation and an image, sorted by sequence and frame."""
    root = Path(root)
    frames = []
    for sequence in sequences(root):
        images = {int(m.group(1)): p for p in (root / sequence).iterdir() if (m := FRAME.match(p.name))}
        for path in sorted((root / f"{sequence}_GT" / "SEG").iterdir()):
            match = MASK.match(path.name)
            if match and int(match.group(1)) in images:
                index = int(match.group(1))
                frames.append(Frame(sequence, index, images[index], path))
    if not frames:
        raise ValueError(f"{root}: no segmented frame with its image; expected {layout_help(root)}")
    return sorted(frames)


__all__ = ["Frame", "annotated_frames", "image_path", "layout_help", "mask_path", "missing_parts", "sequences"]
