"""What a task plugin registers: its suite keys (a pydantic model), metrics and capabilities.

The registration side imports no torch. The implementation named by ``Task.make`` is imported
only inside a trial and follows :class:`TaskImpl`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .norm import DIMS, resolve


class OptimizerConfig(BaseModel):
    """``optimizer = {...}`` in ``[task]``: handed to mmengine's optimizer wrapper."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)


class ScheduleConfig(BaseModel):
    """``schedule = {...}`` in ``[task]``: an epoch-based learning-rate schedule."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Literal["constant", "multistep", "cosine", "exponential"] = "constant"
    milestones: list[Annotated[int, Field(ge=0)]] = []
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    warmup_iters: int = Field(0, ge=0, description="a linear warm-up over this many iterations from 0.001 × lr "
                              "(mmdet's 1x schedule: 500), instead of warmup_epochs")

    @model_validator(mode="after")
    def _milestones_need_multistep(self) -> ScheduleConfig:
        if self.milestones and self.name != "multistep":
            raise ValueError("milestones are only used by name = 'multistep'")
        if self.warmup_epochs and self.warmup_iters:
            raise ValueError("set warmup_epochs or warmup_iters, not both")
        return self


class TaskConfig(BaseModel):
    """Keys every task accepts in ``[task]``; a task subclasses it with its own keys.

    Unknown keys are errors, so that a typo never silently falls back to a default; NaN and
    infinity are refused. A suite's values are validated strictly (a TOML string is never a
    number, a number never a boolean: :mod:`harness.suite.resolve`).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    #: Keys that change how a model trains but not what it is nor its input shape: the pre-flight
    #: check builds variants that differ only in these once. A task adds its own such keys.
    training_keys: ClassVar[frozenset[str]] = frozenset({
        "epochs", "batch_size", "optimizer", "schedule", "val_interval", "checkpoint_interval", "num_workers",
        "devices", "amp", "deterministic", "compile", "norm_decay_mult"})
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    val_interval: int = Field(1, ge=1, description="evaluate on the validation split every N epochs")
    checkpoint_interval: int = Field(1, ge=1, description="save a resumable checkpoint every N epochs")
    amp: bool | Literal["bf16", "fp16"] = Field(
        False, description='mixed precision on CUDA (mmengine\'s AmpOptimWrapper): "bf16", "fp16" (true is '
        '"fp16", with a dynamic loss scale; bf16 needs none); ignored on CPU')
    channels_last: bool = Field(False, description="channels-last memory format for 4-d inputs and the model")
    compile: bool = Field(False, strict=True, description="torch.compile the model (the network, not the norm's "
                          "protocol code)")
    deterministic: bool = Field(False, strict=True, description="deterministic kernels (torch.use_deterministic_"
                                "algorithms, cuDNN deterministic, cuBLAS workspace) and loader workers restarted "
                                "each epoch, so a resumed trial repeats an uninterrupted one; false: "
                                "cudnn.benchmark and persistent workers, as timm and mmdet train")
    norm_decay_mult: float = Field(1.0, ge=0, description="weight decay multiplier of every norm layer's "
                                   "parameters, plugin norms' included (mmdet's norm_decay_mult; 0 in its "
                                   "from-scratch configs)")
    num_workers: int = Field(0, ge=0, description="data-loading worker processes")
    devices: int = Field(1, ge=1, description="processes per trial, one per GPU, started with torchrun "
                         "(DDP; gloo on CPU); batch_size is per device")

    @model_validator(mode="after")
    def _milestones_within_epochs(self) -> TaskConfig:
        late = [m for m in self.schedule.milestones if m >= self.epochs]
        if late:
            raise ValueError(f"schedule.milestones {late} are not below epochs = {self.epochs}, so they never apply")
        return self

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_values(cls, value: Any) -> Any:
        if isinstance(value, bool) or value in ("bf16", "fp16"):
            return value
        raise ValueError('amp must be true, false, "bf16" or "fp16"')

    @property
    def amp_dtype(self) -> str | None:
        """The autocast dtype ``amp`` asks for: ``"bfloat16"``, ``"float16"`` (``amp = true``) or None."""
        return {"bf16": "bfloat16", "fp16": "float16", True: "float16"}.get(self.amp)

    def engine_options(self) -> dict[str, Any]:
        """The options that change how (not what) every norm trains, as the leaderboard records
        them next to the results: determinism, mixed precision, compilation, memory format."""
        return {"deterministic": self.deterministic,
                "amp": {"bfloat16": "bf16", "float16": "fp16"}.get(self.amp_dtype or "", "off"),
                "compile": self.compile, "channels_last": self.channels_last, "devices": self.devices}

    def norm_dims(self) -> frozenset[str]:
        """The input layouts the model puts a norm on ("1d" N×C, "2d" N×C×H×W)."""
        return frozenset({"2d"})

    def capabilities(self) -> frozenset[str]:
        """Capabilities this configuration provides beyond the task's own (e.g. ``"unlabeled"``
        when the configuration sets unlabeled data aside)."""
        return frozenset()

    def variant_label(self) -> str:
        """A short human label of this configuration, used where the matrix is silent."""
        return "default"

    def axis_label(self, key: str, value: Any) -> str:
        """How a matrix axis's value names the variants it makes (``key=value``; a task may
        let a self-explaining value such as a dataset name stand alone)."""
        return f"{key}={value}"

    def missing_data(self, data_root: Path) -> tuple[str, str] | None:
        """``(key, why)`` when the data this configuration reads is not under ``data_root``: the
        ``[task]`` key that chose it, and the layout the loader expects and how to point the
        harness at it; None when it is there (or generated)."""
        return None

    def runtime_problems(self) -> list[str]:
        """Checks that need the run-time libraries (e.g. is the model name known to timm).
        ``harness run`` makes them before anything trains; ``harness check`` stays light and
        leaves them out."""
        return []

    def smoke(self, data_root: Path) -> TaskConfig:
        """The same configuration scaled down to a quick end-to-end check (one epoch, tiny data),
        with tiny data written under ``data_root`` in the very format the real loader reads.
        Tasks whose data is read from disk override this to generate it."""
        return self.model_copy(update={"epochs": 1})


@dataclass(frozen=True)
class Task:
    """A task: how to read its data, build a model with a norm in it, and score it.

    ``make(config, data_root, seed)`` returns an object following :class:`TaskImpl`.
    ``metrics`` maps each metric name to ``"max"`` or ``"min"``. ``provides`` lists the
    capabilities norms may need (:mod:`harness.protocol`: ``"labels"`` for class-balanced
    batches, ``"unlabeled"``, ``"input_batches"``, ``"class_scores"``). ``requires`` names the
    modules the run-time side imports beyond the harness's own dependencies, and ``install`` the
    command that installs them: without them the task is listed as unavailable and a suite
    using it is refused with that command, while everything else works.
    """

    name: str
    make: Callable[..., Any] | str
    config: type[TaskConfig] = TaskConfig
    summary: str = ""
    metrics: Mapping[str, Literal["max", "min"]] = field(default_factory=dict)
    provides: frozenset[str] = frozenset()
    requires: tuple[str, ...] = ()
    install: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "provides", frozenset(self.provides))
        for metric, direction in self.metrics.items():
            if direction not in ("max", "min"):
                raise ValueError(f"task {self.name!r}: metric {metric!r} direction must be 'max' or 'min'")

    def factory(self) -> Callable[..., Any]:
        return resolve(self.make)

    def unavailable(self) -> str | None:
        """Why the task cannot run here (a required module is not installed), or None. Looks the
        modules up without importing them, so listing and checking stay fast."""
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if not missing:
            return None
        how = f"; install it with `{self.install}`" if self.install else ""
        return f"needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed{how}"


@dataclass
class Splits:
    """The datasets of one trial; each item is ``(input, target)``. ``val`` may be ``None``;
    ``unlabeled`` (items are inputs alone) is there when the task provides ``"unlabeled"``."""

    train: Any
    test: Any
    val: Any = None
    unlabeled: Any = None


class TaskImpl(Protocol):
    """The run-time side of a task, built once per trial inside the trial process."""

    def datasets(self) -> Splits: ...

    def model(self, norm_layer: Callable[..., Any]) -> Any:
        """An ``nn.Module``; ``norm_layer(num_features)`` builds each norm layer."""

    def loss(self, outputs: Any, targets: Any) -> Any: ...

    def batch_stats(self, outputs: Any, targets: Any) -> Mapping[str, Any]:
        """Additive sufficient statistics of one evaluation batch (sums and counts): floats, or
        0-d tensors left on the device (no wait for the GPU per batch; the harness moves all
        batches' tensors to the host at once and hands :meth:`reduce` Python numbers)."""

    def reduce(self, stats: Sequence[Mapping[str, float]]) -> Mapping[str, float]:
        """Metrics from the statistics of all evaluation batches."""

    # Optional, for tasks whose networks are not ``outputs = net(inputs)`` with a separate loss
    # (detection: the heads match anchors to the ground truth inside the forward pass):
    #   collate(samples) -> batch                    how loaders batch samples (default torch's)
    #   batch_sampler(sampler, batch_size, drop_last) groups the shuffled training order into
    #                                                batches (default: in order)
    #   data_preprocessor() -> BaseDataPreprocessor  moves, pads and normalizes a batch on the
    #                                                device; its output is ``(inputs, targets)``
    #   losses(net, inputs, targets) -> {name: loss} the training losses, in place of loss()
    #   predict(net, inputs, targets) -> outputs     what batch_stats() scores, in place of net(inputs)
    #   example_samples(size, generator) -> [sample] the pre-flight check's random samples, which
    #                                                collate() batches, in place of example_batch()
    # Such a task does not provide "input_batches": norms that change the training forward or
    # sample inputs of their own are refused for it at `harness check`.

    def example_batch(self, size: int, generator: Any) -> tuple[Any, Any]:
        """Optional: ``(inputs, targets)`` of ``size`` samples in the configuration's real input
        shape (random inputs drawn from the ``torch.Generator``, valid targets), made without
        reading the data set; after it, :meth:`model` needs no data either. The pre-flight check
        (:mod:`harness.preflight`) trains one step of every (model, norm) pair on such batches
        before anything is stored; a task without it is checked on samples of its real data."""


__all__ = ["DIMS", "OptimizerConfig", "ScheduleConfig", "Splits", "Task", "TaskConfig", "TaskImpl"]
