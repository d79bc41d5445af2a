"""Run-time side of ``detection``: mmdet's COCO datasets and pipeline, the detector with the norm,
its own losses and predictions, and mmdet's COCO metric."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmdet.datasets import AspectRatioBatchSampler, CocoDataset
from mmdet.evaluation import CocoMetric
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmdet.utils import register_all_modules
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from torch import nn
from torch.utils.data import Sampler

from harness import Splits
from harness.plugins import disabled_from_env, load_registry

from . import BOX_METRICS, MASK_METRICS, DetectionConfig
from .models import build_detector, detector_config, register_norms

TRAIN, TEST = "train2017", "val2017"
#: mmdet's COCO metric names, and the task's.
COCO_NAMES = {f"{kind}_{item}": f"{prefix}_{name}"
              for kind, prefix in (("bbox", "box"), ("segm", "mask"))
              for item, name in zip(("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l"),
                                    ("ap", "ap50", "ap75", "aps", "apm", "apl"), strict=True)}
assert set(COCO_NAMES.values()) == set(BOX_METRICS) | set(MASK_METRICS)


class PairPreprocessor(DetDataPreprocessor):
    """mmdet's preprocessor (to the device, normalize, pad to a multiple of 32, stack), giving the
    batch as ``(inputs, data_samples)``: the positional form the harness's model takes."""

    def forward(self, data: dict, training: bool = False) -> tuple[torch.Tensor, list[DetDataSample]]:
        out = super().forward(data, training)
        return out["inputs"], out["data_samples"]


class DetectionTask:
    """Follows :class:`harness.task.TaskImpl`, with the optional methods of a task whose loss
    comes out of the network's forward (``collate``, ``data_preprocessor``, ``losses``,
    ``predict``, ``example_samples``).

    The trial ``seed`` is not used: the validation split is fixed by ``data_seed``."""

    def __init__(self, config: DetectionConfig, data_root: Path, seed: int) -> None:
        register_all_modules(init_default_scope=False)
        register_norms(load_registry(disabled_from_env()).norms)  # norm_cfg=dict(type=<harness name>)
        self.config = config
        self.data_root = Path(data_root)
        self.root = config.dataset_dir(self.data_root)
        self.masks = config.model == "mask_rcnn"
        self._metrics: list[tuple[frozenset[int], CocoMetric]] = []

    # -- data ----------------------------------------------------------------------------------

    @cached_property
    def classes(self) -> tuple[str, ...]:
        """The category names, in id order, from the (smaller) val2017 annotation file; COCO's 80
        where there is no data yet (the pre-flight check builds the model without it)."""
        path = self.root / "annotations" / f"instances_{TEST}.json"
        if not path.is_file():
            return tuple(CocoDataset.METAINFO["classes"])
        categories = json.loads(path.read_text())["categories"]
        return tuple(c["name"] for c in sorted(categories, key=lambda c: c["id"]))

    def _pipeline(self, train: bool) -> list[dict[str, Any]]:
        """mmdet's COCO pipeline: decode, (annotations,) resize keeping the aspect ratio, (flip,) pack."""
        resize = dict(type="Resize", scale=tuple(self.config.image_scale), keep_ratio=True)
        if not train:
            return [dict(type="LoadImageFromFile"), resize,
                    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                          "scale_factor"))]
        return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=self.masks),
                resize, dict(type="RandomFlip", prob=self.config.hflip), dict(type="PackDetInputs")]

    def _dataset(self, split: str, train: bool, **kwargs: Any) -> CocoDataset:
        with DefaultScope.overwrite_default_scope("mmdet"):
            return CocoDataset(data_root=str(self.root), ann_file=f"annotations/instances_{split}.json",
                               data_prefix=dict(img=f"{split}/"), metainfo=dict(classes=self.classes),
                               pipeline=self._pipeline(train), **kwargs)

    def datasets(self) -> Splits:
        """train2017 less the validation images (images without objects dropped, as mmdet
        trains), the validation images with the test pipeline, and val2017 whole as the test."""
        filtered = dict(filter_cfg=dict(filter_empty_gt=True, min_size=32))
        full = self._dataset(TRAIN, True, **filtered)
        count = round(self.config.val_fraction * len(full))
        order = np.random.default_rng(self.config.data_seed).permutation(len(full))
        train, val = full, None
        if count:
            train = full.get_subset(sorted(order[count:].tolist()))
            val = self._dataset(TRAIN, False, indices=sorted(order[:count].tolist()), **filtered)
        test = self._dataset(TEST, False, test_mode=True)
        for split, dataset in ((TRAIN, val), (TEST, test)):
            if dataset is not None:
                self._metric(split, dataset)
        return Splits(train=train, val=val, test=test)

    def _metric(self, split: str, dataset: CocoDataset) -> None:
        """mmdet's COCO metric on ``split``'s annotation file, restricted to ``dataset``'s images."""
        ids = [dataset.get_data_info(i)["img_id"] for i in range(len(dataset))]
        metric = CocoMetric(ann_file=str(self.root / "annotations" / f"instances_{split}.json"),
                            metric=["bbox", "segm"] if self.masks else ["bbox"])
        metric.dataset_meta = dict(classes=self.classes)
        metric.img_ids = ids
        self._metrics.append((frozenset(ids), metric))

    collate = staticmethod(pseudo_collate)

    def batch_sampler(self, sampler: Sampler, batch_size: int, drop_last: bool) -> AspectRatioBatchSampler:
        """mmdet's grouping of COCO's training images: landscape with landscape, portrait with
        portrait, so that a batch pads little, over the harness's shuffled (and sharded) order."""
        if not hasattr(sampler, "dataset"):  # mmdet reads image sizes through it; torch's RandomSampler
            sampler.dataset = sampler.data_source  # calls it data_source
        return AspectRatioBatchSampler(sampler, batch_size, drop_last)

    def data_preprocessor(self) -> PairPreprocessor:
        cfg = dict(self._model_config.data_preprocessor)
        cfg.pop("type")
        return PairPreprocessor(**cfg, non_blocking=True)

    # -- model ---------------------------------------------------------------------------------

    @cached_property
    def _model_config(self) -> Any:
        return detector_config(self.config, len(self.classes))

    def model(self, norm_layer: Callable[..., nn.Module]) -> nn.Module:
        pretrained = self.data_root / self.config.pretrained if self.config.pretrained else None
        return build_detector(self.config, norm_layer, len(self.classes), pretrained)

    def losses(self, net: nn.Module, inputs: torch.Tensor, targets: list[DetDataSample]) -> dict[str, Any]:
        """mmdet's losses (RPN, box head and, for Mask R-CNN, mask head), and its logged accuracy."""
        return net.loss(inputs, targets)

    def predict(self, net: nn.Module, inputs: torch.Tensor, targets: list[DetDataSample]) -> list[DetDataSample]:
        """Boxes (and masks) in the original image's coordinates."""
        return net.predict(inputs, targets)

    # -- metrics -------------------------------------------------------------------------------

    def batch_stats(self, outputs: list[DetDataSample], targets: list[DetDataSample]) -> dict[str, list]:
        """The batch's detections in mmdet's COCO metric's form (masks run-length encoded): COCO's
        AP is not a sum over batches, so :meth:`reduce` scores them all at once."""
        metric = self._metrics[0][1]
        metric.process({}, [sample.to_dict() for sample in outputs])
        found, metric.results = metric.results, []
        return {"detections": found}

    def reduce(self, stats: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """COCO's AP, AP50, AP75 and AP of small, medium and large objects, for boxes (and masks),
        on the split whose images these are."""
        results = [pair for batch in stats for pair in batch["detections"]]
        images = {result["img_id"] for _, result in results}
        metric = next(m for ids, m in self._metrics if images <= ids)
        found = {COCO_NAMES[k]: float(v) for k, v in metric.compute_metrics(results).items() if k in COCO_NAMES}
        if found:
            return found
        # No detection in any image (an untrained detector): mmdet's metric reports nothing. COCO's
        # answer is AP 0, and -1 for an object size without ground truth.
        areas = [a["area"] for a in metric._coco_api.load_anns(metric._coco_api.get_ann_ids(img_ids=list(images)))]
        sized = {"s": any(a < 32**2 for a in areas), "m": any(32**2 <= a < 96**2 for a in areas),
                 "l": any(a >= 96**2 for a in areas)}

        def value(name: str) -> float:
            size = name.rpartition("_ap")[2]  # "", "50", "75", "s", "m" or "l"
            return -1.0 if size in sized and not sized[size] else 0.0

        return {name: value(name) for name in BOX_METRICS + (MASK_METRICS if self.masks else ())}

    def example_samples(self, size: int, generator: torch.Generator) -> list[dict[str, Any]]:
        """``size`` samples as the training pipeline packs them, at the configured scale: random
        images, each with two random boxes (and their box-shaped masks); no data is read."""
        long, short = max(self.config.image_scale), min(self.config.image_scale)
        h, w = short, long
        samples = []
        for _ in range(size):
            image = torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8)
            corner = torch.rand(2, 2, generator=generator) * torch.tensor([w / 2, h / 2])
            extent = (0.2 + 0.3 * torch.rand(2, 2, generator=generator)) * torch.tensor([w, h])
            boxes = torch.cat([corner, corner + extent], dim=1)
            masks = np.zeros((2, h, w), dtype=np.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            instances = InstanceData(bboxes=boxes, labels=torch.randint(len(self.classes), (2,), generator=generator))
            if self.masks:
                instances.masks = BitmapMasks(masks, h, w)
            sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                                 img_id=0))
            sample.gt_instances = instances
            samples.append({"inputs": image, "data_samples": sample})
        return samples
