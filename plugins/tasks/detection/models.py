"""mmdet's detectors with the harness's norms in them, configured through mmdet's config system.

Every harness norm is registered in mmengine's ``MODELS`` under its harness name, so that
``norm_cfg=dict(type="iebn")`` works in any mmdet or mmcv config; a trial's norm, bound to the
suite's values, is registered as ``harness_norm``. The model config starts from mmdet's own
from-scratch Faster/Mask R-CNN config (``configs/scratch``: GN in the backbone, the FPN and
four-conv heads, ``frozen_stages=-1``, no pretrained weights) and puts the norm under test
wherever that config has a norm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mmdet
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from torch import nn

from harness.norm import Norm

from . import DetectionConfig

#: mmdet's from-scratch configs, shipped inside the mmdet package.
SCRATCH_CONFIGS = {"faster_rcnn": "faster-rcnn_r50-scratch_fpn_gn-all_6x_coco.py",
                   "mask_rcnn": "mask-rcnn_r50-scratch_fpn_gn-all_6x_coco.py"}
#: The ResNet's output channels per stage, which the FPN takes.
STAGE_CHANNELS = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048],
                  101: [256, 512, 1024, 2048]}
#: The name a trial's norm, bound to the suite's values, is registered under.
TRIAL_NORM = "harness_norm"


def norm_class(name: str, make: Callable[..., nn.Module]) -> type:
    """A class mmcv's ``build_norm_layer`` can take: it calls ``cls(num_features, **cfg)`` with
    ``eps`` among ``cfg`` and names the layer from ``_abbr_``. ``make(num_features, **cfg)``
    builds the harness layer. ``_abbr_`` is "bn" for every norm, so that modules are named as in
    a BN network and a BN checkpoint's other weights load (``pretrained``)."""

    def build(cls: type, num_features: int, **cfg: Any) -> nn.Module:
        return make(num_features, **cfg)

    return type(name, (), {"_abbr_": "bn", "__new__": build, "__doc__": f"The harness norm {name!r} for mmcv."})


def register_norms(norms: Mapping[str, Norm]) -> None:
    """Every harness norm in mmengine's ``MODELS`` under its name. A config's keys that are the
    norm's parameters set them (mmcv always adds ``eps``; a norm without eps ignores it)."""
    for name, norm in norms.items():
        MODELS.register_module(name=name, module=norm_class(name, _configured(norm)), force=True)


def _configured(norm: Norm) -> Callable[..., nn.Module]:
    def make(num_features: int, **cfg: Any) -> nn.Module:
        fields = norm.config.model_fields
        unknown = sorted(set(cfg) - set(fields) - {"eps"})
        if unknown:
            raise TypeError(f"norm {norm.name!r} has no parameters {unknown}; its parameters: {sorted(fields)}")
        config = norm.config(**{k: v for k, v in cfg.items() if k in fields})
        return norm.layer(config)(num_features)

    return make


def detector_config(config: DetectionConfig, classes: int, pretrained: Path | None = None) -> Config:
    """The model config: mmdet's from-scratch config of the chosen detector, with the trial's
    norm (:data:`TRIAL_NORM`) wherever that config has a norm, the configured ResNet depth,
    proposals and sampled RoIs, and the data set's classes."""
    path = Path(mmdet.__file__).parent / ".mim" / "configs" / "scratch" / SCRATCH_CONFIGS[config.model]
    model = Config.fromfile(path).model
    replace_norms(model, dict(type=TRIAL_NORM))
    model.backbone.update(depth=config.depth, zero_init_residual=False, frozen_stages=-1, norm_eval=False,
                          init_cfg=dict(type="Pretrained", checkpoint=str(pretrained)) if pretrained else None)
    model.neck.in_channels = STAGE_CHANNELS[config.depth]
    model.train_cfg.rpn_proposal.max_per_img = model.test_cfg.rpn.max_per_img = config.proposals
    model.train_cfg.rcnn.sampler.num = config.rois_per_image
    model.roi_head.bbox_head.num_classes = classes
    if "mask_head" in model.roi_head:
        model.roi_head.mask_head.num_classes = classes
    return model


def replace_norms(cfg: Any, norm_cfg: dict[str, Any]) -> None:
    """Every ``norm_cfg`` of a (nested) config, replaced by ``norm_cfg``."""
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            if key == "norm_cfg" and value is not None:
                cfg[key] = dict(norm_cfg)
            else:
                replace_norms(value, norm_cfg)
    elif isinstance(cfg, (list, tuple)):
        for item in cfg:
            replace_norms(item, norm_cfg)


def build_detector(config: DetectionConfig, norm_layer: Callable[..., nn.Module], classes: int,
                   pretrained: Path | None = None) -> nn.Module:
    """The detector with ``norm_layer`` as its norm, built by mmdet's registry."""
    from mmdet.registry import MODELS as DET_MODELS

    MODELS.register_module(name=TRIAL_NORM, module=norm_class(TRIAL_NORM, norm_layer), force=True)
    model = detector_config(config, classes, pretrained)
    model.pop("data_preprocessor", None)  # the task's own (:class:`.task.PairPreprocessor`)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return DET_MODELS.build(model)
