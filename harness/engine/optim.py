"""The suite's optimizer and learning-rate schedule as mmengine configs: mmengine builds the
optimizer wrapper (mixed precision included) and the schedulers from them."""

from __future__ import annotations

from typing import Any

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..task import TaskConfig
from .model import TaskModel


def optim_wrapper_cfg(config: TaskConfig, model: TaskModel, device: str) -> dict[str, Any]:
    """mmengine's ``optim_wrapper`` for the suite's optimizer over the model's parameters; the
    parameters the norm's protocol names (``no_weight_decay``) get no weight decay
    (:class:`ProtocolDecayConstructor`).

    Mixed precision where asked, on CUDA (on CPU ``amp`` is ignored: CPU autocast is slower
    than float32 on most CPUs, and the harness's CPU runs are its reference). bf16 keeps
    float32's exponent range, so it trains without a loss scale (and without the scaler's
    per-step check for infinite gradients, a wait for the device); fp16 gets mmengine's dynamic
    loss scale. It applies to every norm alike: no option of the harness favours one norm."""
    opt = config.optimizer
    if opt.name == "sgd":
        optimizer = dict(type="SGD", lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                         weight_decay=opt.weight_decay)
    else:
        optimizer = dict(type={"adam": "Adam", "adamw": "AdamW"}[opt.name], lr=opt.lr, betas=tuple(opt.betas),
                         weight_decay=opt.weight_decay)
    cfg: dict[str, Any] = dict(type="OptimWrapper", optimizer=optimizer)
    dtype = config.amp_dtype
    if dtype is not None and device.startswith("cuda"):
        cfg.update(type="AmpOptimWrapper", dtype=dtype)
        if dtype == "bfloat16":
            cfg["loss_scale"] = dict(enabled=False)
    if model.protocol.no_weight_decay(model.net):
        cfg.update(constructor="ProtocolDecayConstructor", paramwise_cfg=dict(protocol_no_decay=True))
    return cfg


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class ProtocolDecayConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor with two parameter groups: the parameters the norm's protocol
    names (``no_weight_decay``, e.g. weights projected to unit norm) without weight decay, and
    all the others. mmengine's ``custom_keys`` would match names by substring and make a group
    per parameter, and a GPU's multi-tensor optimizer step runs once per group."""

    def add_params(self, params: list[dict[str, Any]], module: TaskModel, prefix: str = "",
                   is_dcn_module: Any = None) -> None:
        skip = {id(p) for p in module.protocol.no_weight_decay(module.net)}
        trained = [p for p in module.parameters() if p.requires_grad]
        params.append({"params": [p for p in trained if id(p) not in skip]})
        params.append({"params": [p for p in trained if id(p) in skip], "weight_decay": 0.0})


def scheduler_cfg(config: TaskConfig) -> list[dict[str, Any]]:
    """mmengine epoch-based schedulers for the suite's ``schedule``, after an optional warm-up."""
    s, epochs = config.schedule, config.epochs
    warm = min(s.warmup_epochs, epochs)
    schedulers: list[dict[str, Any]] = []
    if warm:
        schedulers.append(dict(type="LinearLR", start_factor=1.0 / (warm + 1), by_epoch=True, begin=0,
                               end=warm, convert_to_iter_based=True))
    # mmengine counts a scheduler's steps from its `begin`: milestones and decays start at epoch 0
    # so that they mean the epochs the papers give, and the warm-up overlaps them (as in mmdet).
    whole = dict(by_epoch=True, begin=0, end=epochs)
    if s.name == "multistep":
        schedulers.append(dict(type="MultiStepLR", milestones=s.milestones, gamma=s.gamma, **whole))
    elif s.name == "cosine":
        schedulers.append(dict(type="CosineAnnealingLR", T_max=epochs - warm, eta_min=0.0, by_epoch=True,
                               begin=warm, end=epochs))
    elif s.name == "exponential":
        schedulers.append(dict(type="ExponentialLR", gamma=s.gamma, **whole))
    return schedulers
