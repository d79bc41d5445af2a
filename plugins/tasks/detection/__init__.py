"""The ``detection`` task: Faster R-CNN and Mask R-CNN (ResNet + FPN) from mmdet, with the norm
under test in the backbone, the neck and the heads, trained from scratch on COCO.

Data are read from the data root in COCO's layout (``annotations/instances_train2017.json``,
``train2017/``, ``annotations/instances_val2017.json``, ``val2017/``) through mmdet's own
``CocoDataset`` and pipeline; ``harness run SUITE --smoke`` writes generated shapes in that
very layout (:mod:`.shapes`). Test metrics are on val2017, COCO's standard evaluation set (its
test-dev has no public labels), through mmdet's ``CocoMetric``; the validation split a search
tunes on is carved from train2017 (``val_fraction``), so that nothing is tuned on the test set.

Defaults are the Unified BN paper's (§4.4, Tables 5 and 6; mmdet's 1x schedule): 12 epochs,
SGD lr 0.02, momentum 0.9, weight decay 1e-4, lr × 0.1 at epochs 8 and 11 after a 500-iteration
warm-up, 2 images per GPU (8 GPUs: ``devices = 8``).

This module is what ``harness list`` imports: suite keys and registration only. mmdet, mmcv and
torch are imported by the run-time side (:mod:`.models`, :mod:`.task`); without mmdet the task
is listed as unavailable, with the command that installs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from harness import Task, TaskConfig, hookimpl
from harness.task import OptimizerConfig, ScheduleConfig
from harness_plugins.common.data_root import data_root_help

DATA_ROOT_HELP = data_root_help("generated shapes in COCO's layout")
#: COCO's files under ``data_dir``, for the message when they are missing.
LAYOUT = ("annotations/instances_train2017.json", "train2017/", "annotations/instances_val2017.json", "val2017/")
INSTALL = "make setup (or: bash scripts/install_detection.sh)"
BOX_METRICS = ("box_ap", "box_ap50", "box_ap75", "box_aps", "box_apm", "box_apl")
MASK_METRICS = tuple(m.replace("box", "mask") for m in BOX_METRICS)


class DetectionConfig(TaskConfig):
    """``[task]`` keys of ``detection``; the defaults are the paper's (see the module docstring)."""

    training_keys: ClassVar[frozenset[str]] = TaskConfig.training_keys | {
        "data_dir", "hflip", "val_fraction", "data_seed", "pretrained", "proposals", "rois_per_image"}
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(2, ge=1, description="images per device")
    optimizer: OptimizerConfig = OptimizerConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4)
    schedule: ScheduleConfig = ScheduleConfig(name="multistep", milestones=[8, 11], gamma=0.1, warmup_iters=500)
    model: Literal["faster_rcnn", "mask_rcnn"] = Field(
        "faster_rcnn", description="faster_rcnn (boxes) | mask_rcnn (boxes and instance masks)")
    depth: Literal[18, 34, 50, 101] = Field(50, description="ResNet depth of the backbone (R-50 and R-101 in the "
                                            "paper)")
    data_dir: str = Field("coco", description="COCO's folder, relative to the data root (or absolute)")
    image_scale: tuple[int, int] = Field((1333, 800), description="resize (keeping the aspect ratio) to fit "
                                         "this (long, short) side, as mmdet's COCO pipeline")
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability in training")
    proposals: int = Field(1000, ge=1, description="RPN proposals per image passed to the RoI heads, in training "
                           "and test (mmdet: 1000)")
    rois_per_image: int = Field(512, ge=1, description="RoIs sampled per image to train the box head (mmdet: 512; "
                                "the four-conv head's cost grows with it)")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="fraction of train2017 held out as the validation "
                                "split (data_seed); 0: validate on val2017, the test set, as the paper did")
    data_seed: int = Field(0, description="seed of the validation split, fixed across trial seeds")
    pretrained: str | None = Field(None, description="a backbone checkpoint file (relative to the data root) to "
                                   "start from; default from scratch, as mmdet's scratch configs")

    def missing_data(self, data_root: Path) -> tuple[str, str] | None:
        root = self.dataset_dir(data_root)
        missing = [p for p in LAYOUT if not (root / p).exists()]
        if self.pretrained and not (Path(data_root) / self.pretrained).is_file():
            return "pretrained", (f"no checkpoint file {Path(data_root) / self.pretrained}; give a file under the "
                                  f"data root or remove `pretrained` to train from scratch")
        if not missing:
            return None
        return "data_dir", (f"COCO not found: {root} lacks {', '.join(missing)} of COCO 2017's standard layout. "
                            f"Unpack train2017.zip, val2017.zip and annotations_trainval2017.zip "
                            f"(https://cocodataset.org) there; any data set in COCO's json format in that layout "
                            f"works (`data_dir`). {DATA_ROOT_HELP}")

    def dataset_dir(self, data_root: Path) -> Path:
        """Where COCO lies (``data_dir`` may be absolute)."""
        return Path(data_root) / self.data_dir

    def variant_label(self) -> str:
        return f"{self.model},r{self.depth}"

    def smoke(self, data_root: Path) -> DetectionConfig:
        """Generated shapes in COCO's layout under ``data_root`` (:mod:`.shapes`), and this
        configuration on them: the same detector and norms, one epoch, small images with few
        objects, so fewer proposals and RoIs, and at most 2 devices."""
        from .shapes import write_shapes_coco

        write_shapes_coco(Path(data_root) / "coco-shapes", train=16, val=8)
        return self.model_copy(update={"epochs": 1, "data_dir": "coco-shapes", "image_scale": (128, 128),
                                       "num_workers": min(self.num_workers, 1), "val_fraction": 0.25,
                                       "devices": min(self.devices, 2), "proposals": min(self.proposals, 100),
                                       "rois_per_image": min(self.rois_per_image, 64),
                                       "pretrained": None, "schedule": self.schedule.model_copy(
                                           update={"milestones": [], "name": "constant", "warmup_iters": 0})})


@hookimpl
def harness_register_tasks(register: Callable[[Task], None]) -> None:
    register(
        Task(
            name="detection",
            make="harness_plugins.tasks.detection.task:DetectionTask",
            config=DetectionConfig,
            summary="object detection and instance segmentation with mmdet: Faster R-CNN, Mask R-CNN "
            "(ResNet + FPN) on COCO",
            metrics={**dict.fromkeys(BOX_METRICS, "max"), **dict.fromkeys(MASK_METRICS, "max")},
            requires=("mmdet", "mmcv", "pycocotools"),
            install=INSTALL,
        )
    )


__all__ = ["DetectionConfig"]
