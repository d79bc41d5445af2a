"""The KITTI depth layout: where a frame's image and its annotated depth map lie, and which frames
train and which test.

Under the dataset folder::

    raw/<date>/<drive>/image_02/data/<frame>.png           KITTI raw (synced + rectified), image_03 too;
                                                           .jpg also read (monodepth2 converts them)
    data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame>.png
                                                           16-bit PNG, depth = value / 256 m, 0 = none
    splits/eigen_train_files.txt, splits/eigen_test_files.txt   optional

``<drive>`` is ``<date>_drive_<nnnn>_sync`` and ``<frame>`` ten digits. A frame is used when it
has both an image and an annotated depth map (the first and last five frames of each drive have
none). Test frames: the Eigen test list where present (652 of its 697 frames have an annotated
map), else ``data_depth_annotated/val``. Training frames: the Eigen training list where present,
else every annotated frame of ``train`` (and of ``val`` when the Eigen test list chose the test
frames), always without a drive of the test frames.

A list holds one frame per line, as monodepth2's ``splits/eigen/test_files.txt`` and
``splits/eigen_zhou/train_files.txt``: ``<date>/<drive> <frame> l|r`` (l: image_02, r: image_03),
or as monodepth's Eigen lists: image paths ``<date>/<drive>/image_02/data/<frame>.png`` (the
first path of a line). Standard library only: ``missing_data`` uses it without run-time imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RAW = "raw"
DEPTH = "data_depth_annotated"
SPLITS = "splits"
TRAIN_LIST = "eigen_train_files.txt"
TEST_LIST = "eigen_test_files.txt"
CAMERAS = {"l": "image_02", "r": "image_03"}
IMAGE_EXTENSIONS = (".png", ".jpg")

Key = tuple[str, str, int]  # (drive, camera, frame index)


@dataclass(frozen=True, order=True)
class Frame:
    """One camera's frame: its image and its depth map."""

    drive: str
    camera: str
    index: int
    image: Path
    depth: Path


def image_path(root: Path, drive: str, camera: str, index: int, extension: str = ".png") -> Path:
    return Path(root) / RAW / drive[:10] / drive / camera / "data" / f"{index:010d}{extension}"


def depth_path(root: Path, part: str, drive: str, camera: str, index: int) -> Path:
    return Path(root) / DEPTH / part / drive / "proj_depth" / "groundtruth" / camera / f"{index:010d}.png"


def layout_help(root: Path) -> str:
    """The expected layout in one line, for messages."""
    return (f"{Path(root) / RAW}/<date>/<date>_drive_<nnnn>_sync/image_02/data/<frame>.png (the raw "
            f"sequences; image_03 too) and {Path(root) / DEPTH}/{{train,val}}/<date>_drive_<nnnn>_sync/proj_depth/"
            "groundtruth/image_02/<frame>.png (annotated depth maps: 16-bit PNG, depth = value/256 m, 0 = no "
            f"measurement); optionally {Path(root) / SPLITS}/{TRAIN_LIST} and {TEST_LIST} (the Eigen split, one "
            "'<date>/<drive> <frame> l|r' per line as monodepth2's lists; without them the test frames are "
            "data_depth_annotated/val)")


def missing_parts(root: Path) -> list[str]:
    """The top-level parts of the layout that are absent (a quick look, nothing is scanned)."""
    root = Path(root)
    missing = []
    if not _has_subdirs(root / RAW):
        missing.append(f"{RAW}/<date>/")
    if not _has_subdirs(root / DEPTH / "train"):
        missing.append(f"{DEPTH}/train/<drive>/")
    return missing


def annotated(root: Path, part: str) -> dict[Key, Path]:
    """Every annotated depth map of ``data_depth_annotated/<part>``, by frame."""
    found = {}
    for path in (Path(root) / DEPTH / part).glob("*/proj_depth/groundtruth/image_0[23]/*.png"):
        drive, camera = path.parents[3].name, path.parent.name
        found[(drive, camera, int(path.stem))] = path
    return found


def read_list(path: Path) -> list[Key]:
    """The frames of an Eigen split list (either format of the module docstring)."""
    keys = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        parts = tokens[0].strip("/").split("/")
        try:
            if len(parts) >= 5 and parts[-2] == "data":  # <date>/<drive>/image_0x/data/<frame>.png
                keys.append((parts[-4], parts[-3], int(Path(parts[-1]).stem)))
            elif len(tokens) == 3 and tokens[2] in CAMERAS:  # <date>/<drive> <frame> l|r
                keys.append((parts[-1], CAMERAS[tokens[2]], int(tokens[1])))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{path}:{number}: {line.strip()!r} is neither '<date>/<drive> <frame> l|r' nor "
                             "'<date>/<drive>/image_02/data/<frame>.png'") from None
    return keys


def kitti_frames(root: Path) -> tuple[list[Frame], list[Frame]]:
    """(training frames, test frames), each sorted by drive, camera and frame (module docstring)."""
    root = Path(root)
    maps = {"train": annotated(root, "train"), "val": annotated(root, "val")}
    every = {**maps["val"], **maps["train"]}
    test_list = root / SPLITS / TEST_LIST
    if test_list.is_file():
        test_keys: Iterable[Key] = [k for k in read_list(test_list) if k in every]
        pool = every
    else:
        test_keys, pool = maps["val"], maps["train"]
    train_list = root / SPLITS / TRAIN_LIST
    train_keys: Iterable[Key] = [k for k in read_list(train_list) if k in every] if train_list.is_file() else pool
    test = _frames(root, test_keys, every)
    test_drives = {f.drive for f in test}
    train = [f for f in _frames(root, train_keys, every) if f.drive not in test_drives]
    for name, frames in (("training", train), ("test", test)):
        if not frames:
            raise ValueError(f"{root}: no {name} frame has both an annotated depth map and its raw image; expected "
                             f"{layout_help(root)}")
    return train, test


def _frames(root: Path, keys: Iterable[Key], maps: dict[Key, Path]) -> list[Frame]:
    """The frames of ``keys`` whose raw image exists, sorted, each once."""
    frames = []
    for key in sorted(set(keys)):
        image = next((p for ext in IMAGE_EXTENSIONS if (p := image_path(root, *key, extension=ext)).is_file()), None)
        if image is not None:
            frames.append(Frame(*key, image=image, depth=maps[key]))
    return frames


def _has_subdirs(path: Path) -> bool:
    try:
        return any(entry.is_dir() for entry in path.iterdir())
    except OSError:
        return False
