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
    norm layers' parameters get ``norm_decay_mult`` times the weight decay, and the parameters
    the norm's protocol names (``no_weight_decay``) none (:class:`NormDecayConstructor`).

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
    norm_decay = config.norm_decay_mult != 1.0 and opt.weight_decay > 0
    if norm_decay or model.protocol.no_weight_decay(model.net):
        cfg.update(constructor="NormDecayConstructor", paramwise_cfg=dict(norm_decay_mult=config.norm_decay_mult))
    return cfg


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class NormDecayConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor with up to three parameter groups: the norm layers' parameters with
    ``norm_decay_mult`` times the weight decay, the parameters the norm's protocol names
    (``no_weight_decay``, e.g. weights projected to unit norm) without any, and all the others.

    The norm layers are the modules the norm's factory built (:attr:`TaskModel.norm_layers`):
    mmengine's own ``norm_decay_mult`` recognises torch's norm classes only, so a plugin norm
    would keep its decay where BN loses it. Name-matching ``custom_keys`` would also make a group
    per parameter, and a GPU's multi-tensor optimizer step runs once per group."""

    def add_params(self, params: list[dict[str, Any]], module: TaskModel, prefix: str = "",
                   is_dcn_module: Any = None) -> None:
        skip = {id(p) for p in module.protocol.no_weight_decay(module.net)}
        in_norms = {id(p) for layer in module.norm_layers for p in layer.parameters()} - skip
        trained = [p for p in module.parameters() if p.requires_grad]
        norm_decay = (self.base_wd or 0.0) * self.paramwise_cfg.get("norm_decay_mult", 1.0)
        grouped = skip | in_norms
        params.append({"params": [p for p in trained if id(p) not in grouped]})
        for ids, decay in ((in_norms, norm_decay), (skip, 0.0)):
            chosen = [p for p in trained if id(p) in ids]
            if chosen:
                params.append({"params": chosen, "weight_decay": decay})


def scheduler_cfg(config: TaskConfig) -> list[dict[str, Any]]:
    """mmengine epoch-based schedulers for the suite's ``schedule``, after an optional warm-up."""
    s, epochs = config.schedule, config.epochs
    warm = min(s.warmup_epochs, epochs)
    schedulers: list[dict[str, Any]] = []
    if s.warmup_iters:
        schedulers.append(dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=s.warmup_iters))
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
