"""The ``cell_segmentation`` task: foreground/background segmentation of DIC-HeLa (ISBI Cell
Tracking Challenge), the second experiment of Shekhovtsov & Flach, "Stochastic Normalizations as
Bayesian Learning" (ACCV 2018, §4, Figure 9 and §A.2): 20 annotated 512×512 frames, a random 70 %
to train on and 30 % held out, a deep fully convolutional network, heavy augmentation.

Data are read from the data root in the challenge's layout (:mod:`.layout`): ``01/t000.tif`` and
``01_GT/SEG/man_seg000.tif`` (16-bit instance masks, read through tifffile), likewise ``02``.
``dataset = "cells"`` generates DIC-like cells in that very layout (:mod:`.synthetic`) and reads
them back through the same code, as ``harness run SUITE --smoke`` does.

The held-out 30 % (``val_fraction``, drawn with ``data_seed``) is the paper's validation set. It
is the split the harness evaluates after every ``val_interval`` epochs (the ``val_*`` curves: the
paper's Figure 9 plots validation NLL against epochs) and the one whose final metrics, single pass
and Monte-Carlo, the leaderboard reports: there is no separate test set, as in the paper.

**KL per classified pixel.** The loss is the NLL of an image's classified pixels, summed over the
pixels and averaged over the images of the batch (:mod:`.loss`); the Bayesian scale adds
``kl_factor · Σ KL / |D|`` with |D| the training images. Divided by the pixels per image, that is
the mean NLL per pixel plus ``kl_factor · Σ KL / (classified training pixels)``: ``kl_factor`` is
the KL weight per classified pixel (the paper's 0.1, "the augmentation is worth 10 examples"),
set on the ``bayesian_scale`` norm in the suite. Adam, the paper's optimizer, does not see the
constant factor; an SGD learning rate would need dividing by the pixels per image.

Defaults are the paper's: the FCN of §A.2 (:mod:`.model`), flips and small elastic deformations
(:mod:`.augment`), Adam with lr·γ^epoch, γ^1000 = 0.1, 3000 epochs.

This module is what ``harness list`` imports: suite keys and registration only. numpy, tifffile,
scipy and torch are imported by the run-time modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from harness import Task, TaskConfig, hookimpl
from harness.capabilities import CLASS_SCORES, INPUT_BATCHES
from harness.task import OptimizerConfig, ScheduleConfig
from harness_plugins.common.data_root import data_root_help

DATA_DIRS = {"hela": "DIC-C2DH-HeLa", "cells": "dic-cells"}
DATA_ROOT_HELP = data_root_help("generated DIC-like cells in this layout")
#: Foreground is class 1. Pixel accuracy, foreground IoU and Dice over all pixels of the split, and
#: the mean NLL per pixel (:mod:`.metrics`).
METRICS: dict[str, Literal["max", "min"]] = {"pixel_accuracy": "max", "iou": "max", "dice": "max", "nll": "min"}
#: The paper's FCN (§A.2): 11 9×9 convolutions, an average pooling after the 2nd, 4th, 6th, 9th and 11th.
PAPER_CHANNELS = [64, 64, 32, 32, 16, 16, 8, 8, 8, 4, 4]
PAPER_POOLS = [2, 4, 6, 9, 11]
#: γ with γ^1000 = 0.1, the paper's learning-rate decay per epoch.
PAPER_GAMMA = 0.1 ** (1 / 1000)

Size = tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]]
Positive = Annotated[float, Field(gt=0)]


class CellsConfig(TaskConfig):
    """``[task]`` keys of ``cell_segmentation``; the defaults are the paper's (module docstring)."""

    training_keys: ClassVar[frozenset[str]] = TaskConfig.training_keys | {
        "data_dir", "val_fraction", "data_seed", "flips", "elastic_alpha", "elastic_sigma", "cell_images",
        "cell_radius"}
    epochs: int = Field(3000, ge=1)
    batch_size: int = Field(4, ge=1, description="images per batch (not given by the paper)")
    optimizer: OptimizerConfig = OptimizerConfig(name="adam", lr=1e-3)
    schedule: ScheduleConfig = ScheduleConfig(name="exponential", gamma=PAPER_GAMMA)
    dataset: Literal["hela", "cells"] = Field(
        "hela", description="hela (DIC-C2DH-HeLa read from the data root) | cells (DIC-like cells generated there "
        "in the same layout)")
    data_dir: str | None = Field(None, description="the dataset's folder, relative to the data root (or absolute); "
                                 "default DIC-C2DH-HeLa, or dic-cells (generated, one subfolder per setting)")
    val_fraction: float = Field(0.3, gt=0, lt=1, description="share of the annotated images held out (data_seed): "
                                "the paper's validation set, evaluated every val_interval epochs and reported")
    data_seed: int = Field(0, description="seed of the held-out images (and of generated cells), fixed across "
                           "trial seeds")
    image_size: Size = Field((512, 512), description="(height, width) of every image (DIC-HeLa: 512×512; images of "
                             "another size are refused); generated cells are drawn at it")
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        PAPER_CHANNELS, min_length=1, description="output channels of each k×k convolution, a norm after each "
        "(paper: 64 64 32 32 16 16 8 8 8 4 4)")
    pool_after: list[Annotated[int, Field(ge=1)]] = Field(
        PAPER_POOLS, description="the convolutions (counted from 1) followed by a dense 3×3 average pooling "
        "(paper: 2 4 6 9 11)")
    kernel_size: int = Field(9, ge=1, description="side of the convolutions (odd; paper: 9)")
    flips: bool = Field(True, strict=True, description="random horizontal and vertical flips in training")
    elastic_alpha: float = Field(600.0, ge=0, description="strength of the elastic deformation (torchvision's "
                                 "ElasticTransform alpha, in pixels); 0 turns it off")
    elastic_sigma: float = Field(16.0, gt=0, description="smoothness of the elastic deformation (its Gaussian's "
                                 "σ in pixels)")
    # generated cells (dataset = "cells")
    cell_images: int = Field(20, ge=2, description="cells: annotated images to generate (DIC-HeLa has 20)")
    cell_radius: tuple[Positive, Positive] = Field((30.0, 56.0), description="cells: (min, max) cell radius in "
                                                   "pixels")

    @model_validator(mode="after")
    def _consistent(self) -> CellsConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so that the output stays dense; got {self.kernel_size}")
        late = [p for p in self.pool_after if p > len(self.channels)]
        if late:
            raise ValueError(f"pool_after {late} is beyond the {len(self.channels)} convolutions of channels")
        reach = int(8 * self.elastic_sigma + 1) // 2  # torchvision's blur kernel reaches this far
        if self.elastic_alpha > 0 and reach >= min(self.image_size):
            raise ValueError(f"elastic_sigma = {self.elastic_sigma} is too wide for {self.image_size[0]}×"
                             f"{self.image_size[1]} images: the deformation's smoothing reaches {reach} pixels; "
                             f"keep it below {(2 * min(self.image_size) - 1) / 8:g}")
        if self.cell_radius[0] > self.cell_radius[1]:
            raise ValueError("cell_radius must be (min, max)")
        return self

    def dataset_dir(self, data_root: Path) -> Path:
        """The dataset's folder, or the folder generated cells go under (``data_dir`` may be absolute)."""
        return Path(data_root) / (self.data_dir or DATA_DIRS[self.dataset])

    # -- TaskConfig --------------------------------------------------------------------------------

    def norm_dims(self) -> frozenset[str]:
        """A fully convolutional network: every norm sees N×C×H×W maps."""
        return frozenset({"2d"})

    def variant_label(self) -> str:
        return self.dataset

    def missing_data(self, data_root: Path) -> tuple[str, str] | None:
        if self.dataset == "cells":
            return None  # generated when a trial first reads them
        from .layout import layout_help, missing_parts

        root = self.dataset_dir(data_root)
        missing = missing_parts(root)
        if not missing:
            return None
        where = f"there is no folder {root}" if not root.is_dir() else f"{root} lacks {' and '.join(missing)}"
        return "data_dir", (f"DIC-HeLa not found: {where}. Expected the Cell Tracking "
                            f"Challenge layout: {layout_help(root)} (unpack DIC-C2DH-HeLa.zip of the challenge's "
                            f"training data into {root.parent}). {DATA_ROOT_HELP}")

    def smoke(self, data_root: Path) -> CellsConfig:
        """Generated cells, small, in the challenge layout under ``data_root``, and this
        configuration on them, read as DIC-HeLa is: the same network, 64×64 images, one epoch."""
        from .synthetic import SMOKE, write_smoke_cells

        write_smoke_cells(Path(data_root) / "dic-cells-smoke")
        scale = SMOKE["size"][0] / self.image_size[0]
        return self.model_copy(update={
            "dataset": "hela", "data_dir": "dic-cells-smoke", "epochs": 1, "batch_size": min(self.batch_size, 4),
            "image_size": SMOKE["size"], "elastic_alpha": self.elastic_alpha * scale,
            "elastic_sigma": max(self.elastic_sigma * scale, 1.0), "num_workers": min(self.num_workers, 1)})


@hookimpl
def harness_register_tasks(register: Callable[[Task], None]) -> None:
    register(
        Task(
            name="cell_segmentation",
            make="harness_plugins.tasks.cells.task:CellsTask",
            config=CellsConfig,
            summary="cell segmentation (the Bayesian normalization paper's 11-layer FCN) on DIC-HeLa or generated "
            "DIC-like cells; per-pixel class scores, MC evaluations",
            metrics=METRICS,
            # no per-sample class label (targets are masks); class scores per pixel along dim 1
            provides=frozenset({INPUT_BATCHES, CLASS_SCORES}),
            requires=("tifffile",),
            install="pip install tifffile",
        )
    )


__all__ = ["CellsConfig"]
