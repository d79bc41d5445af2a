"""The ``classification`` task: on-disk readers, splits, transforms, the registered timm models
with the norm injected, metrics against hand computations, and the CLI (missing data, --smoke)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from harness.plugins import load_registry
from harness_plugins.common.datasets import stratified_split
from harness_plugins.norms.baselines import GroupNorm
from harness_plugins.tasks.classification import ClassificationConfig
from harness_plugins.tasks.classification.data import ArrayImages, load_splits, transforms_for
from harness_plugins.tasks.classification.formats import (
    load_cifar,
    read_cifar_file,
    scan_image_folder,
    write_cifar_file,
    write_image_folder,
    write_smoke_data,
)
from harness_plugins.tasks.classification.models import create
from harness_plugins.tasks.classification.task import ClassificationTask

from conftest import REPO, assert_every_trial_complete, run_cli

GN4 = functools.partial(GroupNorm, groups=4, eps=1e-5)


def _random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


# --- CIFAR binary --------------------------------------------------------------------------------


def test_cifar10_record_layout_is_label_then_red_green_blue_planes(tmp_path: Path) -> None:
    image = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    image[0, 2, 5] = (11, 22, 33)  # row 2, column 5
    write_cifar_file(tmp_path / "b.bin", image, np.array([[7]]))
    raw = (tmp_path / "b.bin").read_bytes()
    assert len(raw) == 3073 and raw[0] == 7
    offset = 1 + 2 * 32 + 5
    assert (raw[offset], raw[offset + 1024], raw[offset + 2048]) == (11, 22, 33)
    assert sum(raw[1:]) == 11 + 22 + 33


def test_cifar_binary_round_trip_is_exact(tmp_path: Path) -> None:
    images, labels = _random_images(7), np.arange(7, dtype=np.uint8)[:, None]
    write_cifar_file(tmp_path / "b.bin", images, labels)
    back, back_labels = read_cifar_file(tmp_path / "b.bin", 1)
    assert back.shape == (7, 32, 32, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(back_labels, labels)


def test_cifar10_reads_five_training_files_in_order_and_the_test_file(tmp_path: Path) -> None:
    for i in range(1, 6):
        write_cifar_file(tmp_path / f"data_batch_{i}.bin", _random_images(3, seed=i), np.full((3, 1), i))
    write_cifar_file(tmp_path / "test_batch.bin", _random_images(2, seed=9), np.array([[0], [9]]))
    x, y = load_cifar(tmp_path, "cifar10", "train")
    assert y.tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5] and y.dtype == np.int64
    np.testing.assert_array_equal(x[3:6], _random_images(3, seed=2))
    x_test, y_test = load_cifar(tmp_path, "cifar10", "test")
    assert y_test.tolist() == [0, 9]
    np.testing.assert_array_equal(x_test, _random_images(2, seed=9))


def test_cifar100_uses_the_fine_label_of_its_two_label_bytes(tmp_path: Path) -> None:
    coarse_fine = np.array([[3, 17], [19, 99], [0, 4]])
    write_cifar_file(tmp_path / "train.bin", _random_images(3), coarse_fine)
    write_cifar_file(tmp_path / "test.bin", _random_images(1, seed=1), np.array([[1, 5]]))
    raw = np.fromfile(tmp_path / "train.bin", dtype=np.uint8).reshape(3, 3074)
    assert raw[:, :2].tolist() == coarse_fine.tolist()
    x, y = load_cifar(tmp_path, "cifar100", "train")
    assert y.tolist() == [17, 99, 4]
    np.testing.assert_array_equal(x, _random_images(3))


def test_cifar_reader_rejects_truncated_files_and_foreign_labels(tmp_path: Path) -> None:
    (tmp_path / "bad.bin").write_bytes(bytes(3073 + 10))
    with pytest.raises(ValueError, match="whole number of 3073-byte"):
        read_cifar_file(tmp_path / "bad.bin", 1)
    for i in range(1, 6):
        write_cifar_file(tmp_path / f"data_batch_{i}.bin", _random_images(1), np.array([[12]]))
    with pytest.raises(ValueError, match="out of range"):
        load_cifar(tmp_path, "cifar10", "train")


# --- ImageFolder ---------------------------------------------------------------------------------


def test_image_folder_layout_on_generated_jpegs(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=3, train=4, val=2)
    classes, paths, labels = scan_image_folder(tmp_path / "train")
    assert classes == ["n00000000", "n00000001", "n00000002"]
    assert len(paths) == 12 and np.bincount(labels).tolist() == [4, 4, 4]
    assert all(Path(p).parent.name == classes[y] and p.endswith(".JPEG") for p, y in zip(paths, labels, strict=True))
    _, val_paths, val_labels = scan_image_folder(tmp_path / "val", classes)
    assert len(val_paths) == 6 and np.bincount(val_labels).tolist() == [2, 2, 2]
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="not among the 3 training classes"):
        scan_image_folder(tmp_path / "val", classes)


def test_imagenet_splits_read_the_folders(tmp_path: Path) -> None:
    config = ClassificationConfig(dataset="imagenet", model="resnet18", image_size=32, val_fraction=0.25)
    write_image_folder(tmp_path / "imagenet", classes=4, train=4, val=2)
    splits, classes = load_splits(config, tmp_path)
    assert classes == 4 and (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 8)
    assert np.bincount(splits.val.targets).tolist() == [1, 1, 1, 1]
    assert set(splits.train.paths).isdisjoint(splits.val.paths)
    assert splits.train.paths == sorted(splits.train.paths) and splits.val.paths == sorted(splits.val.paths)
    x, y = splits.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0


# --- splits and transforms -----------------------------------------------------------------------


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    kept, taken = stratified_split(labels, 26, seed=0)
    assert len(taken) == 26 and len(kept) == 74
    assert sorted(np.concatenate([kept, taken]).tolist()) == list(range(100))
    np.testing.assert_array_equal(np.bincount(labels[taken]), [10, 8, 5, 3])  # shares 10.4, 7.8, 5.2, 2.6
    np.testing.assert_array_equal(taken, stratified_split(labels, 26, seed=0)[1])
    assert not np.array_equal(np.sort(taken), np.sort(stratified_split(labels, 26, seed=1)[1]))


def test_stratified_split_among_some_indices_takes_only_from_them() -> None:
    labels = np.repeat(np.arange(2), 50)
    among = np.arange(0, 100, 2)
    kept, taken = stratified_split(labels, 10, seed=0, among=among)
    assert sorted([*kept, *taken]) == among.tolist()
    assert np.bincount(labels[taken]).tolist() == [5, 5]
    assert stratified_split(labels, 0, seed=0, among=among)[0].tolist() == among.tolist()


def test_stratified_split_of_data_too_small_to_stratify_is_a_random_split_of_that_size() -> None:
    """More classes than places (a smoke run's CIFAR-100: 2 images a class), or a class of one:
    scikit-learn refuses to stratify, and the split is a plain random one."""
    for labels, count in ((np.repeat(np.arange(100), 2), 20), (np.array([0, 0, 0, 0, 1, 2, 2, 2]), 3)):
        kept, taken = stratified_split(labels, count, seed=0)
        assert len(taken) == count and sorted([*kept, *taken]) == list(range(len(labels)))
        np.testing.assert_array_equal(taken, stratified_split(labels, count, seed=0)[1])


def test_digits_splits_val_and_unlabeled_from_train_only() -> None:
    base = ClassificationConfig(dataset="digits", model="allcnn_c", val_fraction=0.1)
    plain, classes = load_splits(base, Path("."))
    both, _ = load_splits(base.model_copy(update={"unlabeled_fraction": 0.5}), Path("."))
    assert classes == 10 and plain.unlabeled is None
    assert len(plain.train) + len(plain.val) + len(plain.test) == 1797
    assert np.bincount(plain.val.targets).min() >= 14  # 10% of about 144 per class
    assert both.val.targets == plain.val.targets  # unlabeled_fraction leaves val and test alone
    assert both.test.targets == plain.test.targets
    assert len(both.unlabeled) + len(both.train) == len(plain.train)
    assert isinstance(both.unlabeled[0], torch.Tensor) and both.unlabeled[0].shape == (1, 8, 8)
    assert base.capabilities() == frozenset()
    assert base.model_copy(update={"unlabeled_fraction": 0.5}).capabilities() == {"unlabeled"}


def test_cifar_eval_transform_is_the_normalized_image_and_train_crops_shift_it() -> None:
    config = ClassificationConfig(dataset="cifar10")
    image = _random_images(1)
    train_tf, eval_tf = transforms_for(config)
    x = ArrayImages(image, np.array([3]), eval_tf, "RGB")[0][0]
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    expected = (torch.from_numpy(image[0]).permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(x, expected)
    torch.manual_seed(0)
    crops = torch.stack([ArrayImages(image, np.array([3]), train_tf, "RGB")[0][0] for _ in range(8)])
    assert crops.shape == (8, 3, 32, 32) and not torch.equal(crops[0], crops[1])


def test_digits_with_three_channels_repeat_the_grey_image() -> None:
    config = ClassificationConfig(dataset="digits", model="allcnn_c", in_chans=3, image_size=32, resize=32)
    splits, _ = load_splits(config, Path("."))
    x = splits.test[0][0]
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[0], x[2])


# --- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "blocks", "params"), [("cifar_resnet20", 3, 0.27e6), ("cifar_resnet44", 7, 0.66e6)])
def test_he_cifar_resnets(name: str, blocks: int, params: float) -> None:
    net = create(name, nn.BatchNorm2d, num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 * blocks + 1  # + the classifier: depth 6n + 2; option A has no shortcut convs
    assert [c.out_channels for c in convs[:: 2 * blocks]] == [16, 16, 32, 64]
    assert abs(sum(p.numel() for p in net.parameters()) - params) / params < 0.02  # He et al.: 0.27M, 0.66M
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_balanced_batch_papers_resnet20_variant() -> None:
    net = create("cifar_resnet20", nn.BatchNorm2d, num_classes=10, widths=(64, 128, 256), downsample="maxpool")
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    assert net.forward_features(torch.randn(1, 3, 36, 36)).shape == (1, 256, 9, 9)  # the paper's Table 1


def test_allcnn_c_follows_the_paper() -> None:
    net = create("allcnn_c", nn.BatchNorm2d, num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 96, 96, 192, 192, 192, 192, 192, 10]
    assert [c.kernel_size[0] for c in convs] == [3, 3, 3, 3, 3, 3, 3, 1, 1]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 1]
    kinds = [type(m).__name__ for m in net]
    assert kinds[-4:] == ["Conv2d", "BatchNorm2d", "AdaptiveAvgPool2d", "Flatten"]  # head: Norm → pool
    assert kinds.count("BatchNorm2d") == 9 and kinds.count("LeakyReLU") == 8
    assert all(m.negative_slope == 0.01 for m in net if isinstance(m, nn.LeakyReLU))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet18", "allcnn_c", "resnet18"])
def test_the_norm_is_injected_and_no_batch_norm_is_left(name: str) -> None:
    net = create(name, GN4, num_classes=5)
    assert not any(isinstance(m, _BatchNorm) for m in net.modules())
    assert any(isinstance(m, GroupNorm) for m in net.modules())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_norm_act_layers_keep_their_activation() -> None:
    net = create("efficientnet_b0", GN4, num_classes=5)  # BatchNormAct2d: swapped, not given as norm_layer
    assert isinstance(net.bn1, nn.Sequential) and isinstance(net.bn1[0], GroupNorm)
    assert isinstance(net.bn1[2], nn.SiLU)
    assert not any(isinstance(m, _BatchNorm) for m in net.modules())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_a_model_without_a_place_for_the_norm_is_an_error() -> None:
    from timm.models import register_model

    @register_model
    def plain_convnet_for_tests(pretrained: bool = False, **kwargs: object) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    with pytest.raises(ValueError, match="norm under test would not be in it"):
        create("plain_convnet_for_tests", GN4)


def test_a_models_own_eps_does_not_override_the_suites() -> None:
    """timm's builders pass their own eps (DPN: 1e-3) or momentum to ``norm_layer``; the norm gets
    the suite's values all the same."""
    from timm.models import register_model

    @register_model
    def eps_passing_convnet_for_tests(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3,
                                      norm_layer: type[nn.Module] = nn.BatchNorm2d, **kwargs: object) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_chans, 4, 3), norm_layer(4, eps=0.1, momentum=0.5), nn.ReLU(),
                             nn.Conv2d(4, 8, 3), norm_layer(8, eps=1e-6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))

    norm = load_registry().norms["batchnorm"]
    layer = norm.layer(norm.config.model_validate({"eps": 1e-3}))
    passed: list[dict[str, object]] = []

    def recording(num_features: int, **kwargs: object) -> nn.Module:
        passed.append(kwargs)
        return layer(num_features, **kwargs)

    net = create("eps_passing_convnet_for_tests", recording, num_classes=3)
    assert passed == [{"eps": 0.1, "momentum": 0.5}, {"eps": 1e-6}]  # the model's own values reached norm_layer
    norms = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    assert len(norms) == 2 and all(m.eps == 1e-3 and m.momentum == 0.1 for m in norms)  # the suite's, the default


def test_config_checks_model_names_and_reserved_kwargs() -> None:
    (problem,) = ClassificationConfig(model="resnet5O").runtime_problems()
    assert re.search("unknown timm model 'resnet5O'.*resnet50", problem)
    assert ClassificationConfig(model="cifar_resnet20").runtime_problems() == []
    with pytest.raises(ValidationError, match="set by the task"):
        ClassificationConfig(model_kwargs={"num_classes": 3})
    with pytest.raises(ValidationError, match="set `resize`"):
        ClassificationConfig(dataset="digits", model="allcnn_c", image_size=32)
    assert ClassificationConfig().norm_dims() == {"2d"}


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_against_hand_computation() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(40, 7))
    targets = rng.integers(0, 7, size=40)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    top1 = np.mean(probs.argmax(axis=1) == targets)
    top5 = np.mean([t in np.argsort(-p)[:5] for p, t in zip(probs, targets, strict=True)])
    nll = -np.mean(np.log(probs[np.arange(40), targets]))
    ece = 0.0
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == targets
    for b in range(15):  # bins (b/15, (b+1)/15]
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    task = ClassificationTask(ClassificationConfig(), Path("."), 0)
    out, y = torch.tensor(logits, dtype=torch.float32), torch.tensor(targets)
    whole = task.reduce([task.batch_stats(out, y)])
    halves = task.reduce([task.batch_stats(out[:13], y[:13]), task.batch_stats(out[13:], y[13:])])
    for metrics in (whole, halves):
        assert metrics["top1"] == pytest.approx(top1) and metrics["top5"] == pytest.approx(top5)
        assert metrics["nll"] == pytest.approx(nll, rel=1e-5) and metrics["ece"] == pytest.approx(ece, rel=1e-5)
    # log-probabilities (All-CNN-C's LogSoftmax, MC averages) give the same metrics as logits
    assert task.reduce([task.batch_stats(out.log_softmax(1), y)])["nll"] == pytest.approx(nll, rel=1e-5)


def test_loss_is_cross_entropy_with_label_smoothing() -> None:
    task = ClassificationTask(ClassificationConfig(label_smoothing=0.1), Path("."), 0)
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    logp = logits.log_softmax(1)[0]
    expected = -(0.9 * logp[0] + 0.1 * logp.mean())
    assert task.loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


# --- configuration and smoke data ----------------------------------------------------------------


def test_missing_data_messages_show_the_layout(tmp_path: Path) -> None:
    key, imagenet = ClassificationConfig(dataset="imagenet", model="resnet50").missing_data(tmp_path)
    assert key == "dataset"
    assert f"{tmp_path}/imagenet/train/<wnid>/*.JPEG" in imagenet and "HARNESS_DATA" in imagenet
    key, cifar = ClassificationConfig(dataset="cifar100").missing_data(tmp_path)
    assert key == "dataset" and "train.bin, test.bin" in cifar and "data_root" in cifar
    assert ClassificationConfig(dataset="digits", model="allcnn_c").missing_data(tmp_path) is None


def test_smoke_writes_the_real_format_once(tmp_path: Path) -> None:
    config = ClassificationConfig(dataset="cifar10", batch_size=128, data_dir="/elsewhere")
    small = config.smoke(tmp_path)
    assert (small.epochs, small.batch_size, small.data_dir, small.model) == (1, 16, None, config.model)
    assert small.missing_data(tmp_path) is None
    files = sorted(p.name for p in (tmp_path / "cifar-10-batches-bin").iterdir())
    assert files == [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]
    before = (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").stat().st_mtime_ns
    write_smoke_data("cifar10", tmp_path / "cifar-10-batches-bin")  # present: left alone
    assert (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").stat().st_mtime_ns == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    x, y = load_cifar(tmp_path / "cifar-10-batches-bin", "cifar10", "train")
    assert np.bincount(y).tolist() == [5] * 10


def test_variant_labels_name_a_dataset_axis_by_the_dataset_alone() -> None:
    config = ClassificationConfig()
    assert config.axis_label("dataset", "cifar100") == "cifar100"
    assert config.axis_label("model", "resnet18") == "model=resnet18"
    assert config.variant_label() == "cifar10,cifar_resnet20"


# --- the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("suite", "expected"), [
    ("imagenet", "imagenet/train/<wnid>/*.JPEG"),
    ("cifar10", "data_batch_1.bin"),
])
def test_run_without_data_stops_with_the_layout(tmp_path: Path, suite: str, expected: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("run", str(REPO / "suites" / f"{suite}.toml"), "--out", str(tmp_path), cwd=tmp_path,
                     env={"HARNESS_DATA": str(empty)})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr and str(empty) in result.stderr and "HARNESS_DATA" in result.stderr
    assert not (tmp_path / "runs").exists()


SMOKE_SUITE = """
[suite]
name = "cls-smoke"
seeds = [0, 1]
metric = "top1"
baseline = "batchnorm"

[task]
use = "classification"
dataset = "cifar10"
model = "cifar_resnet20"
epochs = 30
batch_size = 128

[[norm]]
use = "batchnorm"
"""


def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    suite = tmp_path / "cls.toml"
    suite.write_text(SMOKE_SUITE)
    result = run_cli("run", str(suite), "--smoke", "--quiet", cwd=tmp_path, env={"HARNESS_DATA": str(tmp_path / "no")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "cls-smoke-smoke" / "data" / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    board = json.loads((tmp_path / "leaderboard" / "cls-smoke-smoke.json").read_text())
    (row,) = board["variants"]["cifar10,cifar_resnet20"]
    assert row["norm"] == "batchnorm" and not row["failed"]
    assert set(row["metrics"]) == {"top1", "top5", "nll", "ece"}
    assert 0 <= row["metrics"]["ece"][0] <= 1 and row["metrics"]["top5"][0] >= row["metrics"]["top1"][0]
    assert board["trials"][0]["state"] == "complete"
    assert_every_trial_complete(tmp_path, "cls-smoke-smoke", 1)


def test_an_unknown_model_stops_run_but_not_check(tmp_path: Path) -> None:
    """`harness check` stays free of timm; `harness run` asks timm before anything trains."""
    suite = tmp_path / "typo.toml"
    suite.write_text('[suite]\nname = "typo"\nseeds = [0]\nmetric = "top1"\n'
                     '[task]\nuse = "classification"\ndataset = "digits"\nmodel = "resnet5O"\n'
                     '[[norm]]\nuse = "batchnorm"\n')
    assert run_cli("check", str(suite), cwd=tmp_path).returncode == 0
    result = run_cli("run", str(suite), cwd=tmp_path)
    assert result.returncode == 2 and "unknown timm model 'resnet5O'" in result.stderr
    assert not (tmp_path / "runs").exists()
