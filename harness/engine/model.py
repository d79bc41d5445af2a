"""The task, the network and the norm's protocol in mmengine's model interface: the one training
step every trial takes (and the conformance kit and the pre-flight check take too), and the
metric that adds up a task's evaluation statistics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseDataPreprocessor, BaseModel, MMDistributedDataParallel
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS

from ..norm import Norm, NormConfig
from ..protocol import Evaluation, NormProtocol, TrialContext
from ..task import Task, TaskConfig, TaskImpl


class TaskModel(BaseModel):
    """A task's plain ``nn.Module`` and loss in mmengine's model interface, with the norm's
    protocol at the points it may change: the training forward (and extra loss), the work
    after each optimizer step, and the prediction of an evaluation protocol."""

    def __init__(self, net: torch.nn.Module, impl: TaskImpl, protocol: NormProtocol, ctx: TrialContext,
                 norm_layers: Sequence[torch.nn.Module] = ()) -> None:
        # Batches go to the device without blocking the host (from page-locked memory on CUDA);
        # a task may pad and normalize them there too (its own preprocessor).
        make_preprocessor = getattr(impl, "data_preprocessor", None)
        super().__init__(data_preprocessor=make_preprocessor() if make_preprocessor
                         else BaseDataPreprocessor(non_blocking=True))
        self.net = net
        # The modules the norm's factory built, whatever their class: the optimizer's norm rules
        # apply to these (mmengine's recognise torch's own norm classes only).
        self.norm_layers = list(norm_layers)
        self.impl = impl
        self.protocol = protocol
        self.ctx = ctx
        self.evaluation: Evaluation | None = None
        # Across processes, mmengine drops the padding of the last shares by counting results,
        # so each sample must be one result there; in one process a batch is one result.
        self.per_sample = False
        self.step_losses: dict[str, torch.Tensor] | None = None  # the last training step's, on the device

    def train_step(self, data: Any, optim_wrapper: OptimWrapper, wrapper: BaseModel | None = None,
                   ) -> dict[str, torch.Tensor]:
        """One training step: the protocol's forward, the task's loss plus the norm's extra loss,
        the optimizer's update, then the protocol's after-step work. ``wrapper`` is the
        distributed wrapper whose forward synchronises gradients, when there is one."""
        loss, log_vars = self.step_loss(data, optim_wrapper, wrapper)
        optim_wrapper.update_params(loss)
        self.after_step()
        return log_vars

    def step_loss(self, data: Any, optim_wrapper: OptimWrapper, wrapper: BaseModel | None = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The first half of :meth:`train_step`: the batch to the device, the forward and the loss."""
        runner = wrapper or self
        with optim_wrapper.optim_context(runner):
            data = self.data_preprocessor(data, True)
            losses = runner._run_forward(data, mode="loss")
        return self.parse_losses(losses)

    def after_step(self) -> None:
        """The second half of :meth:`train_step`, after the optimizer (e.g. weight projection)."""
        self.protocol.after_optimizer_step(self.net)

    def parse_losses(self, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mmengine's sum of the losses, with its log variables kept here on the device for
        :class:`~harness.engine.hooks.TrialHook` instead of returned: mmengine's RuntimeInfoHook
        would read each one into a Python float every iteration, which waits for the GPU to
        finish the step. The hook reads them in one transfer every ``LOG_INTERVAL`` iterations and
        hands them to the message hub, so the logs and TensorBoard show the same values."""
        loss, log_vars = super().parse_losses(losses)
        self.step_losses = {name: value.detach() for name, value in log_vars.items()}
        return loss, {}

    def forward(self, inputs: torch.Tensor, targets: Any, extra: Any = None, mode: str = "tensor") -> Any:
        if self.ctx.config.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if mode == "loss":
            task_losses = getattr(self.impl, "losses", None)
            if task_losses is not None:  # the loss comes out of the network's own forward (detectors)
                losses = dict(task_losses(self.net, inputs, targets))
            else:
                losses = {"loss": self.impl.loss(self.protocol.train_forward(self.net, inputs, extra), targets)}
            extra_loss = self.protocol.extra_loss(self.net, self.ctx)
            if extra_loss is not None:
                losses["loss_norm"] = extra_loss
            return losses
        predict = getattr(self.impl, "predict", None)
        if self.evaluation:
            outputs = self.evaluation.predict(self.net, inputs)
        else:
            outputs = predict(self.net, inputs, targets) if predict else self.net(inputs)
        if mode == "predict":
            if self.per_sample:
                return [self.impl.batch_stats(outputs[i:i + 1], targets[i:i + 1]) for i in range(len(targets))]
            return [self.impl.batch_stats(outputs, targets)]
        return outputs


@MODEL_WRAPPERS.register_module(force=True)
class TaskModelDDP(MMDistributedDataParallel):
    """mmengine's DDP wrapper, taking :meth:`TaskModel.train_step` (mmengine's own wrapper
    re-implements the step and would skip the protocol's after-step work)."""

    def train_step(self, data: Any, optim_wrapper: OptimWrapper) -> dict[str, torch.Tensor]:
        return self.module.train_step(data, optim_wrapper, wrapper=self)


class TaskMetric(BaseMetric):
    """Adds up the task's per-batch statistics and reduces them to its metrics."""

    def __init__(self, impl: TaskImpl) -> None:
        super().__init__()
        self.impl = impl

    def process(self, data_batch: Any, data_samples: Sequence[Mapping[str, Any]]) -> None:
        self.results.extend(data_samples)

    def evaluate(self, size: int) -> dict:
        # The statistics stayed on the device batch after batch; one transfer brings them all.
        self.results = to_host(self.results)
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict[str, float]:
        return {k: float(v) for k, v in self.impl.reduce(results).items()}


def to_host(results: list[Any]) -> list[Any]:
    """Evaluation results (mappings of statistics; floats or tensors, possibly on the GPU) with
    every tensor replaced by Python numbers: 0-d tensors become a float or int, others a CPU
    tensor. One transfer per (device, dtype)."""
    found: list[tuple[int, Any, torch.Tensor]] = [(i, k, v) for i, r in enumerate(results) if isinstance(r, Mapping)
                                                  for k, v in r.items() if isinstance(v, torch.Tensor)]
    if not found:
        return results
    out = [dict(r) if isinstance(r, Mapping) else r for r in results]
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, Any, torch.Tensor]]] = {}
    for item in found:
        groups.setdefault((item[2].device, item[2].dtype), []).append(item)
    for items in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for _, _, t in items]).cpu()
        numbers = flat.tolist()
        offset = 0
        for i, k, t in items:
            n = t.numel()
            out[i][k] = numbers[offset] if t.dim() == 0 else flat[offset:offset + n].reshape(t.shape)
            offset += n
    return out


def build_net(impl: TaskImpl, config: TaskConfig, norm_layer: Callable[..., Any],
              ) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """The task's network with ``norm_layer`` as its norm, in the configured memory format, and
    the norm layers it built. Shared by :func:`~harness.engine.run_trial` and the pre-flight
    check (:mod:`harness.preflight`)."""
    built: list[torch.nn.Module] = []

    def tracked(num_features: int, *args: Any, **kwargs: Any) -> torch.nn.Module:
        built.append(norm_layer(num_features, *args, **kwargs))
        return built[-1]

    net = impl.model(tracked)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, built


def build_model(task: Task, config: TaskConfig, norm: Norm, norm_config: NormConfig, impl: TaskImpl,
                net: torch.nn.Module, splits: Any, seed: int, world: int = 1, rank: int = 0,
                norm_layers: Sequence[torch.nn.Module] = ()) -> TaskModel:
    """The norm's protocol set up on the trial's context, and the network, the task and the
    protocol in mmengine's model interface. Shared by :func:`~harness.engine.run_trial`, the
    pre-flight check and the conformance kit."""
    protocol = norm.make_protocol(norm_config) or NormProtocol()
    ctx = TrialContext(net=net, splits=splits, config=config, seed=seed, provides=task.provides | config.capabilities(),
                       generator=torch.Generator().manual_seed(seed), world=world, rank=rank)
    protocol.setup(ctx)
    model = TaskModel(net, impl, protocol, ctx, norm_layers)
    model.per_sample = world > 1
    return model
