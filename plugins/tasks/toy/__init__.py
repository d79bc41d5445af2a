"""The ``toy`` task: a spiral MLP or an 8×8 digits CNN, small enough to train in seconds.

Both datasets can set unlabeled inputs aside for semi-supervised norms (capability
``unlabeled``): spiral with ``unlabeled_per_class``, digits with ``unlabeled_fraction``.

This module is what ``harness list`` imports, so it holds only the suite keys and the
registration; numpy, sklearn and torch are imported by the run-time side in ``task.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from harness import Task, TaskConfig, hookimpl
from harness.capabilities import CLASS_SCORES, INPUT_BATCHES, LABELS


class ToyConfig(TaskConfig):
    """``[task]`` keys of ``toy``; the spiral keys and the digits keys each apply to one dataset."""

    epochs: int = Field(20, ge=1)
    dataset: Literal["spiral", "digits"] = Field("spiral", description="which toy problem")
    # spiral (TensorFlow playground generator)
    classes: int = Field(2, ge=2, description="spiral: number of arms (classes)")
    points_per_class: int = Field(100, ge=1, description="spiral: labeled training points per class")
    test_points_per_class: int = Field(200, ge=1, description="spiral: test points per class")
    val_points_per_class: int = Field(0, ge=0, description="spiral: validation points per class (0 = none)")
    unlabeled_per_class: int = Field(
        0, ge=0, description="spiral: unlabeled points per class, the unlabeled split of semi-supervised norms"
    )
    noise: float = Field(0.0, ge=0, description="spiral: each coordinate gets U(-1, 1) * noise")
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        [16, 16, 16, 16], min_length=1, description="spiral: hidden layer widths of the MLP"
    )
    # digits (sklearn's bundled 8x8 digits)
    channels: int = Field(16, ge=1, description="digits: width of the first conv layer")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="digits: fraction held out for validation")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits: fraction held out for test")
    unlabeled_fraction: float = Field(
        0.0, ge=0, lt=1, description="digits: fraction of the training split whose labels are dropped (unlabeled split)"
    )
    data_seed: int = Field(0, description="seed of the data generation or split, fixed across trial seeds")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> ToyConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self

    def norm_dims(self) -> frozenset[str]:
        """The spiral MLP normalizes N×C features, the digits CNN N×C×H×W maps."""
        return frozenset({"1d"}) if self.dataset == "spiral" else frozenset({"2d"})

    def capabilities(self) -> frozenset[str]:
        """``unlabeled`` when the configured dataset sets unlabeled inputs aside."""
        unlabeled = self.unlabeled_per_class if self.dataset == "spiral" else self.unlabeled_fraction
        return frozenset({"unlabeled"}) if unlabeled > 0 else frozenset()

    def variant_label(self) -> str:
        return self.dataset

    def axis_label(self, key: str, value: Any) -> str:
        """A ``dataset`` axis names its variants by the dataset alone (``spiral``, ``digits``)."""
        return str(value) if key == "dataset" else super().axis_label(key, value)


@hookimpl
def harness_register_tasks(register: Callable[[Task], None]) -> None:
    register(
        Task(
            name="toy",
            make="harness_plugins.tasks.toy.task:ToyTask",
            config=ToyConfig,
            summary="spiral MLP (TensorFlow playground) or sklearn 8x8 digits CNN; trains in seconds on CPU",
            metrics={"accuracy": "max", "nll": "min"},
            # always class labels; "unlabeled" depends on the configuration (ToyConfig.capabilities)
            provides=frozenset({LABELS, INPUT_BATCHES, CLASS_SCORES}),
        )
    )
