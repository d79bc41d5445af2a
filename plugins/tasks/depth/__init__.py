"""The ``depth`` task: monocular depth estimation on KITTI, the Unsupervised BN paper's main
experiment (Kocyigit et al. 2020, §4 and Figure 6), where most frames have no depth map and the
unlabeled frames may feed the normalization statistics.

Data are read from the data root in the KITTI depth layout (:mod:`.layout`): the raw sequences'
images and the annotated depth maps (16-bit PNG, depth = value / 256 m, 0 = no measurement), with
the Eigen split lists where present. ``dataset = "scenes"`` generates drives through street
scenes with a known depth in that very layout (:mod:`.scenes`) and reads them back through the
same code, as ``harness run SUITE --smoke`` does.

``labeled_fraction`` keeps the depth maps of that share of the training frames, evenly spaced in
each sequence as a slower depth sensor would give them (with a seeded phase, :mod:`.data`), while
every image is kept: the others form the ``unlabeled`` split that ``unsupervised_bn`` draws. The
paper keeps the number of images fixed; by default (``epoch_size = "images"``) so is the length
of an epoch: it draws as many labeled samples as there are images, and every fraction trains the
same number of steps (the paper does not say which; ``"labeled"`` passes once over the labeled
frames instead).

Defaults are the paper's: the DispNet network of SfMLearner (32 … 512 channels, 7 levels,
predictions at 4 scales, :mod:`.model`), input 256×832, Adam at lr 2e-4, batch 128, 160 epochs.

This module is what ``harness list`` imports: suite keys and registration only. numpy, PIL and
torch are imported by the run-time modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from harness import Task, TaskConfig, hookimpl
from harness.capabilities import INPUT_BATCHES, UNLABELED
from harness.task import OptimizerConfig
from harness_plugins.common.data_root import data_root_help

#: KITTI's largest raw image (2011_10_03: 376×1241; 2011_09_26: 375×1242): every annotated depth
#: map fits this canvas, on which maps of several sizes are batched for evaluation.
KITTI_CANVAS = (376, 1242)
DATA_DIRS = {"kitti": "kitti", "scenes": "depth-scenes"}
DATA_ROOT_HELP = data_root_help("generated scenes in this layout")
#: The metrics, standard since Eigen et al. 2014, each averaged over the test images.
METRICS: dict[str, Literal["max", "min"]] = {
    "abs_rel": "min", "sq_rel": "min", "rmse": "min", "rmse_log": "min", "a1": "max", "a2": "max", "a3": "max"}

Size = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class DepthConfig(TaskConfig):
    """``[task]`` keys of ``depth``; the defaults are the paper's (see the module docstring)."""

    training_keys: ClassVar[frozenset[str]] = TaskConfig.training_keys | {
        "data_dir", "labeled_fraction", "epoch_size", "val_fraction", "data_seed", "scene_frames", "scene_test_frames",
        "scene_size", "gt_canvas"}
    epochs: int = Field(160, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=2e-4)
    dataset: Literal["kitti", "scenes"] = Field(
        "kitti", description="kitti (read from the data root) | scenes (generated there in the KITTI layout)")
    data_dir: str | None = Field(None, description="the dataset's folder, relative to the data root (or absolute); "
                                 "default kitti, or depth-scenes (generated scenes, one subfolder per setting)")
    labeled_fraction: float = Field(1.0, gt=0, le=1, description="share of the training frames that keep their "
                                    "depth map (evenly spaced in each sequence); the others are the unlabeled split")
    epoch_size: Literal["images", "labeled"] = Field(
        "images", description="images: an epoch draws as many labeled samples as there are training images (the "
        "labeled frames repeated), so every labeled fraction trains the same number of steps; labeled: one pass "
        "over the labeled frames")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of the training frames held out for "
                                "validation (data_seed), before the labeled fraction is taken")
    data_seed: int = Field(0, description="seed of the validation and labeled subsets (and of generated scenes), "
                           "fixed across trial seeds")
    image_size: Size = Field((256, 832), description="network input (height, width): every image is resized to it")
    width: int = Field(32, ge=2, description="channels of the first encoder level, doubled at each level up to "
                       "16× (DispNet: 32 … 512)")
    levels: int = Field(7, ge=1, description="encoder levels, each halving the resolution (DispNet: 7)")
    scales: int = Field(4, ge=1, description="scales with a depth prediction, finest first (DispNet: 4)")
    gt_canvas: Size | None = Field(None, description="(height, width) on which ground-truth maps of different sizes "
                                   "are batched for evaluation; default KITTI's largest image (376, 1242), or the "
                                   "generated scene size")
    # generated scenes (dataset = "scenes")
    scene_frames: int = Field(2000, ge=2, description="scenes: training frames (validation carved from them)")
    scene_test_frames: int = Field(200, ge=1, description="scenes: test frames")
    scene_size: Size = Field((128, 416), description="scenes: (height, width) of the generated images and depth maps")

    @model_validator(mode="after")
    def _consistent(self) -> DepthConfig:
        if self.scales > self.levels:
            raise ValueError(f"scales = {self.scales} needs as many decoder levels; levels is {self.levels}")
        return self

    @property
    def canvas(self) -> tuple[int, int]:
        """The evaluation canvas (see ``gt_canvas``)."""
        if self.gt_canvas is not None:
            return self.gt_canvas
        return KITTI_CANVAS if self.dataset == "kitti" else self.scene_size

    def dataset_dir(self, data_root: Path) -> Path:
        """The KITTI folder, or the folder the generated scenes go under (``data_dir`` may be absolute)."""
        return Path(data_root) / (self.data_dir or DATA_DIRS[self.dataset])

    # -- TaskConfig --------------------------------------------------------------------------------

    def norm_dims(self) -> frozenset[str]:
        """A fully convolutional network: every norm sees N×C×H×W maps."""
        return frozenset({"2d"})

    def capabilities(self) -> frozenset[str]:
        """``unlabeled`` when some training frames have lost their depth map."""
        return frozenset({UNLABELED}) if self.labeled_fraction < 1 else frozenset()

    def variant_label(self) -> str:
        return self.dataset

    def missing_data(self, data_root: Path) -> tuple[str, str] | None:
        if self.dataset == "scenes":
            return None  # generated when a trial first reads them
        from .layout import DEPTH, RAW, layout_help, missing_parts

        root = self.dataset_dir(data_root)
        missing = missing_parts(root)
        if not missing:
            return None
        return "data_dir", (f"KITTI not found: {root} lacks {' and '.join(missing)}. Expected the KITTI depth "
                            f"layout: {layout_help(root)} (unpack the raw sequences into {root / RAW} and "
                            f"data_depth_annotated.zip into {root / DEPTH}). {DATA_ROOT_HELP}")

    def smoke(self, data_root: Path) -> DepthConfig:
        """Generated scenes, small, in the KITTI layout under ``data_root`` and this configuration
        on them, read as KITTI is: the same network (depth, widths, scales) on 64×208 inputs, one
        epoch, small batches."""
        from .scenes import SMOKE_SIZE, write_smoke_kitti

        write_smoke_kitti(Path(data_root) / "kitti-scenes")
        return self.model_copy(update={
            "dataset": "kitti", "data_dir": "kitti-scenes", "epochs": 1, "batch_size": min(self.batch_size, 8),
            "image_size": (64, 208), "gt_canvas": SMOKE_SIZE, "val_fraction": 0.1,
            "num_workers": min(self.num_workers, 1)})


@hookimpl
def harness_register_tasks(register: Callable[[Task], None]) -> None:
    register(
        Task(
            name="depth",
            make="harness_plugins.tasks.depth.task:DepthTask",
            config=DepthConfig,
            summary="monocular depth estimation (DispNet) on KITTI or generated scenes, with unlabeled frames "
            "for the norm statistics (UBN paper)",
            metrics=METRICS,
            # regression: no class labels, no class scores; "unlabeled" per configuration
            provides=frozenset({INPUT_BATCHES}),
        )
    )


__all__ = ["DepthConfig"]
