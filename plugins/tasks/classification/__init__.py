"""The ``classification`` task: timm models with the norm under test, on ImageNet (ImageFolder),
CIFAR-10/100 (their binary distribution) or sklearn's bundled digits.

Real data are read from the data root in their standard layouts; ``harness run SUITE --smoke``
writes tiny data in the very same formats (so the real readers are what it exercises). The
validation split is carved from the training set (stratified, ``data_seed``): the papers tune
on validation, never on test.

Augmentation. ``train_crop = "random_resized"`` is timm's ``create_transform`` (random-resized
crop, flips, colour jitter / AutoAugment / RandAugment, random erasing; eval: resize to
``image_size / crop_pct`` and centre crop), the ImageNet recipe. Its crop throws away most of a
32×32 image, so small images use ``"pad"`` instead, the CIFAR recipe of He et al. 2016: zero
padding of ``crop_padding`` pixels (4 at 32×32), a random ``image_size`` crop and the flips,
followed by timm's colour / auto-augment and random-erasing stages; eval pads and takes the
centre crop (the image itself when ``image_size`` is the native size). ``"auto"`` picks
``random_resized`` for imagenet and ``pad`` for cifar10/cifar100/digits.

This module is what ``harness list`` imports: suite keys and registration only. numpy, PIL,
torch and timm are imported by the run-time modules (:mod:`.formats`, :mod:`.data`,
:mod:`.models`, :mod:`.task`), and by :meth:`ClassificationConfig.runtime_problems`, which
asks timm's registry when a run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from harness import Task, TaskConfig, hookimpl
from harness.capabilities import CLASS_SCORES, INPUT_BATCHES, LABELS
from harness.errors import did_you_mean
from harness_plugins.common.data_root import data_root_help

Dataset = Literal["imagenet", "cifar10", "cifar100", "digits"]

#: Where each dataset lies under the data root by default (the folder its archive unpacks to).
DATA_DIRS: dict[str, str] = {"imagenet": "imagenet", "cifar10": "cifar-10-batches-bin",
                             "cifar100": "cifar-100-binary"}
#: Native image side (ImageNet images vary: None) and channels.
NATIVE_SIZE: dict[str, int | None] = {"imagenet": None, "cifar10": 32, "cifar100": 32, "digits": 8}
CHANNELS: dict[str, int] = {"imagenet": 3, "cifar10": 3, "cifar100": 3, "digits": 1}
#: Keys the task sets itself when it calls ``timm.create_model``.
RESERVED_MODEL_KWARGS = frozenset({"num_classes", "in_chans", "norm_layer", "pretrained", "pretrained_cfg",
                                   "checkpoint_path"})

DATA_ROOT_HELP = data_root_help()


class ClassificationConfig(TaskConfig):
    """``[task]`` keys of ``classification``.

    Defaults are the CIFAR-10 ones; ``image_size``, ``crop_padding``, ``mean`` and ``std``
    default per dataset. ``model`` is any timm model name, including the papers' networks this
    plugin registers in timm (``cifar_resnet20``, ``cifar_resnet44``, ``cifar_resnet18/34/50/101``,
    ``allcnn_c``); nothing is downloaded (no pretrained weights).
    """

    training_keys: ClassVar[frozenset[str]] = TaskConfig.training_keys | {"data_dir"}

    dataset: Dataset = Field("cifar10", description="imagenet (ImageFolder) | cifar10 | cifar100 | digits")
    model: str = Field("cifar_resnet20", description="a timm model name (`timm.list_models()`)")
    model_kwargs: dict[str, Any] = Field(
        {}, description="extra keyword arguments of timm.create_model, e.g. {zero_init_last = false}")
    data_dir: str | None = Field(
        None, description="the dataset's folder, relative to the data root (or absolute); default: imagenet, "
        "cifar-10-batches-bin or cifar-100-binary")
    image_size: int | None = Field(None, ge=1, description="model input side; default 224 (imagenet), 32 (cifar), "
                                   "8 (digits)")
    in_chans: int | None = Field(None, description="model input channels; default the dataset's; 3 on digits "
                                 "repeats the grey channel")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of the training set held out for "
                                "validation (stratified, data_seed)")
    unlabeled_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of the remaining training set whose "
                                      "labels are dropped: the unlabeled split of semi-supervised norms")
    data_seed: int = Field(0, description="seed of the validation and unlabeled splits, fixed across trial seeds")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy loss")
    # augmentation (see the module docstring)
    train_crop: Literal["auto", "random_resized", "pad"] = Field(
        "auto", description="random_resized (timm, ImageNet) | pad (pad + random crop, CIFAR) | auto (by dataset)")
    crop_padding: int | None = Field(None, ge=0, description="pad: zero padding before the crop; default 4 pixels "
                                     "at 32×32, in proportion for other sizes")
    resize: int | None = Field(None, ge=1, description="pad: resize (shorter side) before padding; default the "
                               "native size (required on imagenet)")
    scale: tuple[float, float] = Field((0.08, 1.0), description="random_resized: area fraction range")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random_resized: aspect ratio range")
    crop_pct: float = Field(0.875, gt=0, le=1, description="random_resized: eval centre crop fraction")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    vflip: float = Field(0.0, ge=0, le=1, description="vertical flip probability")
    color_jitter: float = Field(0.0, ge=0, description="colour jitter strength (timm; off with auto_augment)")
    auto_augment: str | None = Field(None, description="timm auto-augment policy, e.g. 'rand-m9-mstd0.5'")
    re_prob: float = Field(0.0, ge=0, le=1, description="random erasing probability (timm)")
    re_mode: Literal["const", "rand", "pixel"] = "const"
    mean: tuple[float, ...] | None = Field(None, description="per-channel input mean; default the dataset's")
    std: tuple[float, ...] | None = Field(None, description="per-channel input std; default the dataset's")

    def runtime_problems(self) -> list[str]:
        """The model name against timm's registry: it needs timm, so `harness run` asks it before
        anything trains and `harness check` stays free of heavy imports."""
        import timm

        from . import models  # noqa: F401 - registers the papers' networks in timm

        if timm.is_model(self.model):
            return []
        hint = did_you_mean(self.model, timm.list_models())
        return [f"model: unknown timm model {self.model!r}{hint}; `timm.list_models()` lists them"]

    @field_validator("model_kwargs")
    @classmethod
    def _not_reserved(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(RESERVED_MODEL_KWARGS & set(kwargs))
        if taken:
            raise ValueError(f"{taken} are set by the task (classes and channels from the dataset, the norm "
                             "from [[norm]], no pretrained weights)")
        return kwargs

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationConfig:
        channels = CHANNELS[self.dataset]
        if self.in_chans not in (None, channels) and not (self.dataset == "digits" and self.in_chans == 3):
            raise ValueError(f"in_chans = {self.in_chans}: {self.dataset} has {channels} channel(s) (digits may "
                             "also use 3, the grey channel repeated)")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per input channel")
        if self.crop_mode == "pad":
            base = self.resize or NATIVE_SIZE[self.dataset]
            if base is None:
                raise ValueError("train_crop = 'pad' on imagenet needs `resize` (images differ in size)")
            if self.size > base + 2 * self.padding:
                raise ValueError(f"image_size {self.size} is larger than the padded image ({base} + 2 × "
                                 f"{self.padding}); set `resize`")
        return self

    # -- derived settings (what the run-time side reads) -------------------------------------------

    @property
    def channels(self) -> int:
        return self.in_chans or CHANNELS[self.dataset]

    @property
    def size(self) -> int:
        return self.image_size or NATIVE_SIZE[self.dataset] or 224

    @property
    def crop_mode(self) -> Literal["random_resized", "pad"]:
        if self.train_crop != "auto":
            return self.train_crop
        return "random_resized" if self.dataset == "imagenet" else "pad"

    @property
    def padding(self) -> int:
        if self.crop_padding is not None:
            return self.crop_padding
        return max(1, round(4 * (self.resize or NATIVE_SIZE[self.dataset] or self.size) / 32))

    def dataset_dir(self, data_root: Path) -> Path:
        """Where the configured dataset lies (``data_dir`` may be absolute)."""
        return Path(data_root) / (self.data_dir or DATA_DIRS.get(self.dataset, self.dataset))

    # -- TaskConfig --------------------------------------------------------------------------------

    def norm_dims(self) -> frozenset[str]:
        """Convolutional networks: every norm sees N×C×H×W maps."""
        return frozenset({"2d"})

    def capabilities(self) -> frozenset[str]:
        """``unlabeled`` when part of the training set is kept without labels."""
        return frozenset({"unlabeled"}) if self.unlabeled_fraction > 0 else frozenset()

    def variant_label(self) -> str:
        return f"{self.dataset},{self.model}"

    def axis_label(self, key: str, value: Any) -> str:
        """A ``dataset`` axis names its variants by the dataset alone (``cifar10``, ``cifar100``)."""
        return str(value) if key == "dataset" else super().axis_label(key, value)

    def missing_data(self, data_root: Path) -> tuple[str, str] | None:
        why = self._missing_data(data_root)
        return None if why is None else ("dataset", why)

    def _missing_data(self, data_root: Path) -> str | None:
        if self.dataset == "digits":
            return None  # bundled with scikit-learn
        root = self.dataset_dir(data_root)
        if self.dataset == "imagenet":
            missing = [s for s in ("train", "val") if not _has_subdirs(root / s)]
            if not missing:
                return None
            return (f"ImageNet not found: no class folders in {' or '.join(str(root / s) for s in missing)}. "
                    f"Expected the standard layout {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG "
                    "(the validation images sorted into class folders, e.g. with valprep.sh); any ImageFolder "
                    f"data set works (`data_dir`). {DATA_ROOT_HELP}")
        names = cifar_files(self.dataset)
        missing = [n for n in names if not (root / n).is_file()]
        if not missing:
            return None
        name = "CIFAR-10" if self.dataset == "cifar10" else "CIFAR-100"
        archive = "cifar-10-binary.tar.gz" if self.dataset == "cifar10" else "cifar-100-binary.tar.gz"
        return (f"{name} (binary version) not found: {root} lacks {', '.join(missing)}. Unpack {archive} "
                f"(https://www.cs.toronto.edu/~kriz/cifar.html) in the data root; it creates "
                f"{DATA_DIRS[self.dataset]}/ with {', '.join(names)}. {DATA_ROOT_HELP}")

    def smoke(self, data_root: Path) -> ClassificationConfig:
        """Tiny data in the real format under ``data_root`` (written once, atomically) and this
        configuration on it: same model and norms, one epoch, small batches and images."""
        from .formats import write_smoke_data

        if self.dataset != "digits":
            write_smoke_data(self.dataset, Path(data_root) / DATA_DIRS[self.dataset])
        update: dict[str, Any] = {"epochs": 1, "batch_size": min(self.batch_size, 16), "data_dir": None,
                                  "num_workers": min(self.num_workers, 1)}
        if self.dataset == "imagenet":
            update.update(image_size=32, resize=None if self.resize is None else 36)
        elif self.dataset != "digits":
            update.update(image_size=16, resize=16)
        return self.model_copy(update=update)


def cifar_files(dataset: str) -> tuple[str, ...]:
    """The files of a CIFAR binary distribution, training files first."""
    if dataset == "cifar10":
        return (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
    return ("train.bin", "test.bin")


def _has_subdirs(path: Path) -> bool:
    try:
        return any(entry.is_dir() for entry in path.iterdir())
    except OSError:
        return False


@hookimpl
def harness_register_tasks(register: Callable[[Task], None]) -> None:
    register(
        Task(
            name="classification",
            make="harness_plugins.tasks.classification.task:ClassificationTask",
            config=ClassificationConfig,
            summary="image classification with timm models: ImageNet (ImageFolder), CIFAR-10/100 (binary), "
            "sklearn digits",
            metrics={"top1": "max", "top5": "max", "nll": "min", "ece": "min"},
            provides=frozenset({LABELS, INPUT_BATCHES, CLASS_SCORES}),
        )
    )
