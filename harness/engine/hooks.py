"""The mmengine hooks of a trial: progress, losses and training time (:class:`TrialHook`), the
norm protocol's epoch boundary (:class:`ProtocolHook`), and what an exact resume needs: every
random stream seeded per epoch (:class:`EpochSeedHook`), the checkpoint's share of the harness
(:class:`ResumeHook`), and checkpoints written so that a kill never loses the resume point
(:class:`AtomicCheckpointHook`)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from ..atomic import write_text
from ..events import EpochEnd, TrialEvent, Validated
from ..protocol import NormProtocol
from ..seeds import derived_seed
from .model import TaskModel

# mmengine's logger writes every LOG_INTERVAL iterations; the harness reads the losses from the
# device at the same points (and at each epoch's end).
LOG_INTERVAL = 50


class TrialHook(Hook):
    """Stops on a non-finite loss, measures training time and reports progress to the worker.

    Highest priority: its epoch timer starts before and stops before the other hooks' epoch
    work (checkpoint saving), so ``train_seconds`` is the training loop itself; and it runs
    before mmengine's logger, to which it hands the losses.

    The losses stay on the device: every ``LOG_INTERVAL`` iterations and at the end of each
    epoch one transfer reads them all (the only wait for the device that the harness adds to
    training), checks that they are finite and passes them to mmengine's message hub.
    """

    priority = "HIGHEST"

    def __init__(self, on_epoch: Callable[[TrialEvent], None], model: TaskModel | None = None) -> None:
        self.on_epoch = on_epoch
        self.model = model
        self.samples = 0  # labeled samples trained on, counted batch by batch
        self.curves: dict[str, list[float]] = {"train_loss": []}
        self.train_seconds = 0.0
        self.epochs_trained = 0  # by this process (a resumed trial counts from its checkpoint)
        self.validated_epoch = 0  # the last epoch after which validation ran
        self.peak_cuda_bytes = 0  # mmengine's logger resets CUDA's peak counter; the hook keeps the peak
        self._loss_sum = 0.0
        self._iters = 0
        self._epoch_start = 0.0
        self._pending: list[tuple[int, list[str], list[torch.Tensor]]] = []  # (batch_idx, names, losses)

    def before_train_epoch(self, runner: Runner) -> None:
        self._loss_sum, self._iters = 0.0, 0
        self._pending = []
        self._epoch_start = time.perf_counter()

    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None,
                         outputs: Mapping[str, Any] | None = None) -> None:
        losses = dict(outputs or {})
        if self.model is not None and self.model.step_losses is not None:
            losses.update(self.model.step_losses)
            self.model.step_losses = None
        self._pending.append((batch_idx, list(losses), [torch.as_tensor(v).float() for v in losses.values()]))
        self.samples += _batch_size(data_batch)
        self._track_peak()
        if (batch_idx + 1) % LOG_INTERVAL == 0 or self.end_of_epoch(runner.train_dataloader, batch_idx):
            self._flush(runner)

    def _flush(self, runner: Runner) -> None:
        """Read the pending losses in one transfer; fail on the first non-finite one."""
        pending, self._pending = self._pending, []
        flat = [t for _, _, tensors in pending for t in tensors]
        values = iter(_host_values(flat))
        for batch_idx, names, _ in pending:
            logged = {name: next(values) for name in names}
            loss = logged.get("loss", math.nan)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at epoch {runner.epoch + 1}, iteration {batch_idx + 1}")
            self._loss_sum += loss
            self._iters += 1
            for name, value in logged.items():
                runner.message_hub.update_scalar(f"train/{name}", value)

    def _track_peak(self) -> None:
        if torch.cuda.is_initialized():  # a host-side query of the caching allocator, no wait
            self.peak_cuda_bytes = max(self.peak_cuda_bytes, torch.cuda.max_memory_allocated())

    def after_val_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._track_peak()

    def after_test_iter(self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._track_peak()

    def after_train_epoch(self, runner: Runner) -> None:
        if self._pending:
            self._flush(runner)
        self.train_seconds += time.perf_counter() - self._epoch_start
        self.epochs_trained += 1
        self.curves["train_loss"].append(self._loss_sum / max(self._iters, 1))
        self.on_epoch(EpochEnd(runner.epoch + 1, runner.max_epochs, self.curves["train_loss"][-1]))

    def after_val_epoch(self, runner: Runner, metrics: Mapping[str, float] | None = None) -> None:
        values = {name: float(value) for name, value in (metrics or {}).items()}
        for name, value in values.items():
            self.curves.setdefault(f"val_{name}", []).append(value)
        self.curves.setdefault("val_epoch", []).append(float(runner.epoch))  # the x of every val_ curve
        self.validated_epoch = runner.epoch
        self.on_epoch(Validated(runner.epoch, runner.max_epochs, values))

    def state_dict(self) -> dict[str, Any]:
        """The records a resumed trial continues: curves, samples and training time so far."""
        return {"curves": self.curves, "samples": self.samples, "train_seconds": self.train_seconds,
                "validated_epoch": self.validated_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curves = {name: list(values) for name, values in state["curves"].items()}
        self.samples, self.train_seconds = state["samples"], state["train_seconds"]
        self.validated_epoch = state["validated_epoch"]


def _host_values(tensors: Sequence[torch.Tensor]) -> list[float]:
    """Python floats of 0-d tensors, with one transfer per device (stack, then copy)."""
    values: list[float] = [0.0] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        for i, v in zip(indices, torch.stack([tensors[i] for i in indices]).tolist(), strict=True):
            values[i] = v
    return values


class ProtocolHook(Hook):
    """Calls the norm's protocol at the start of each training epoch (the work after each
    optimizer step is :meth:`TaskModel.train_step`'s)."""

    priority = "ABOVE_NORMAL"

    def __init__(self, protocol: NormProtocol, net: torch.nn.Module) -> None:
        self.protocol = protocol
        self.net = net

    def before_train_epoch(self, runner: Runner) -> None:
        self.protocol.before_train_epoch(self.net, runner.epoch)


def _batch_size(batch: Any) -> int:
    """Samples in a training batch: ``(inputs, targets[, extra])`` or mmengine's ``{"inputs": ...}``."""
    first = batch["inputs"] if isinstance(batch, Mapping) else batch[0]
    return len(first)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a trial's epoch."""
    return derived_seed(seed, epoch)


class EpochSeedHook(Hook):
    """Seeds every random stream of the trial from (trial seed, epoch) as each training epoch
    starts: torch's on every device, numpy's, Python's, and the trial's generator that orders
    the training batches. What an epoch draws then depends on nothing that ran before it
    (validation, checkpointing, a restart), so a trial resumed at an epoch boundary draws what an
    uninterrupted one draws. Host-side only: seeding a CUDA generator does not wait for the
    device."""

    priority = "VERY_HIGH"  # before the protocol's epoch start and mmengine's sampler seeding

    def __init__(self, seed: int, generator: torch.Generator) -> None:
        self.seed = seed
        self.generator = generator

    def before_train_epoch(self, runner: Runner) -> None:
        seed = epoch_seed(self.seed, runner.epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator
        self.generator.manual_seed(seed)


class ResumeHook(Hook):
    """The harness's share of a checkpoint, for a resume that repeats an uninterrupted trial.

    mmengine's checkpoint holds the model, the optimizer (with AMP's loss scaler), the
    schedulers and the message hub. This adds the norm protocol's state (counters, latches)
    and the trial's records (:meth:`TrialHook.state_dict`). A kill after a checkpoint is written
    and before its epoch's validation runs would lose that validation: a resumed trial runs it
    first."""

    def __init__(self, protocol: NormProtocol, trial: TrialHook) -> None:
        self.protocol = protocol
        self.trial = trial

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict[str, Any]) -> None:
        checkpoint["harness"] = {"protocol": self.protocol.state_dict(), "trial": self.trial.state_dict()}

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict[str, Any]) -> None:
        self.protocol.load_state_dict(checkpoint["harness"]["protocol"])
        self.trial.load_state_dict(checkpoint["harness"]["trial"])

    def before_train(self, runner: Runner) -> None:
        loop, epoch = runner.train_loop, runner.epoch
        due = epoch >= loop.val_begin and (epoch % loop.val_interval == 0 or epoch == loop.max_epochs)
        if epoch and due and self.trial.validated_epoch < epoch:
            runner.val_loop.run()


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's checkpoint hook, in an order that never loses the resume point. mmengine
    removes the oldest checkpoint first, writes the new one in place and then rewrites
    ``last_checkpoint`` in place; a kill in between leaves a cut-short file or an empty pointer.
    Here the new checkpoint is written whole under a temporary name and renamed, the pointer is
    replaced by a rename, and only then is the oldest checkpoint beyond ``max_keep_ckpts`` removed."""

    def _save_checkpoint_with_step(self, runner: Runner, step: int, meta: dict[str, Any]) -> None:
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename + ".tmp", self.file_client_args,
                               save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                               meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not self.keep_ckpt_ids or self.keep_ckpt_ids[-1] != step:
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        if not is_main_process():
            return
        Path(self.last_ckpt + ".tmp").replace(self.last_ckpt)
        write_text(Path(runner.work_dir) / "last_checkpoint", self.last_ckpt)
        # Every other checkpoint, including one a kill left behind before it could be removed.
        out_dir = Path(self.out_dir)
        kept = {out_dir / self.filename_tmpl.format(k) for k in self.keep_ckpt_ids}
        for found in out_dir.glob(self.filename_tmpl.format("*")):
            if found not in kept:
                found.unlink(missing_ok=True)
