"""The ``toy`` task: spiral generator and files, digits split, models, metrics and config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from harness_plugins.common.files import atomic_directory
from harness_plugins.tasks.toy import ToyConfig
from harness_plugins.tasks.toy.spiral import (
    HEADER,
    generate_spiral,
    load_spiral,
    read_split,
    spiral_dir,
    write_spiral,
)
from harness_plugins.tasks.toy.task import ToyTask

SPLIT_FILES = ("train.csv", "test.csv", "val.csv", "unlabeled.csv", "meta.json")


def _small_spiral(**overrides: object) -> ToyConfig:
    keys = {
        "points_per_class": 25,
        "test_points_per_class": 40,
        "val_points_per_class": 10,
        "unlabeled_per_class": 30,
        "noise": 0.2,
        "data_seed": 3,
    }
    return ToyConfig(**{**keys, **overrides})


class RecordingNorm:
    """A ``norm_layer`` that remembers the ``num_features`` it was called with."""

    def __init__(self, layer: type[torch.nn.Module]) -> None:
        self.layer = layer
        self.calls: list[int] = []

    def __call__(self, num_features: int) -> torch.nn.Module:
        self.calls.append(num_features)
        return self.layer(num_features)


# --- generator -------------------------------------------------------------------------------


def test_spiral_starts_at_origin_with_linear_radii() -> None:
    x, _ = generate_spiral(50, 2, 0.0, np.random.default_rng(0))
    assert x[0].tolist() == [0.0, 0.0]
    radii = np.linalg.norm(x[:50].astype(np.float64), axis=1)
    np.testing.assert_allclose(radii, 5 * np.arange(50) / 50, atol=1e-5)


def test_two_class_spiral_is_point_symmetric() -> None:
    x, _ = generate_spiral(40, 2, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(x[40:], -x[:40], atol=1e-5)


def test_spiral_follows_the_playground_angle() -> None:
    x, _ = generate_spiral(10, 3, 0.0, np.random.default_rng(0))
    i, k = 7, 2
    r, t = 5 * i / 10, 1.75 * (i / 10) * 2 * math.pi + 2 * math.pi * k / 3
    np.testing.assert_allclose(x[k * 10 + i], [r * math.sin(t), r * math.cos(t)], atol=1e-5)


def test_spiral_shapes_labels_and_noise_bound() -> None:
    x, y = generate_spiral(30, 3, 0.5, np.random.default_rng(1))
    assert x.shape == (90, 2) and x.dtype == np.float32
    assert y.shape == (90,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [30, 30, 30]
    clean, _ = generate_spiral(30, 3, 0.0, np.random.default_rng(1))
    offset = np.abs(x - clean)
    assert offset.max() <= 0.5 + 1e-6 and offset.max() > 0


# --- files -----------------------------------------------------------------------------------


def test_write_then_read_round_trips_exactly(tmp_path: Path) -> None:
    config = _small_spiral()
    write_spiral(tmp_path / "s", config)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(SPLIT_FILES)
    rng = np.random.default_rng(config.data_seed)
    for name, n in [("train", 25), ("test", 40), ("val", 10), ("unlabeled", 30)]:
        expected_x, expected_y = generate_spiral(n, config.classes, config.noise, rng)
        x, y = read_split(tmp_path / "s", name)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert np.array_equal(x, expected_x)
        assert np.array_equal(y, np.full_like(expected_y, -1) if name == "unlabeled" else expected_y)
        header = (tmp_path / "s" / f"{name}.csv").read_text().splitlines()[0]
        assert header == ",".join(HEADER) == "x1,x2,label"
    assert not [p for p in tmp_path.iterdir() if p.name != "s"], "temporary directory left behind"


def test_regenerating_is_byte_identical_and_data_seed_matters(tmp_path: Path) -> None:
    write_spiral(tmp_path / "a", _small_spiral())
    write_spiral(tmp_path / "b", _small_spiral())
    write_spiral(tmp_path / "c", _small_spiral(data_seed=4))
    for name in SPLIT_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not np.array_equal(read_split(tmp_path / "a", "train")[0], read_split(tmp_path / "c", "train")[0])


def test_optional_splits_do_not_change_train_and_test(tmp_path: Path) -> None:
    write_spiral(tmp_path / "full", _small_spiral())
    write_spiral(tmp_path / "bare", _small_spiral(val_points_per_class=0, unlabeled_per_class=0))
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["meta.json", "test.csv", "train.csv"]
    for name in ("train.csv", "test.csv"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "bare" / name).read_bytes()


def test_spiral_directory_is_keyed_by_generator_parameters(tmp_path: Path) -> None:
    config = _small_spiral()
    directory = spiral_dir(tmp_path, config)
    assert directory.parent == tmp_path / "spiral"
    assert spiral_dir(tmp_path, _small_spiral(epochs=3, hidden=[4])) == directory
    assert spiral_dir(tmp_path, _small_spiral(noise=0.3)) != directory
    splits = load_spiral(tmp_path, config)
    assert directory.is_dir() and sorted(splits) == ["test", "train", "val"]
    (directory / "train.csv").write_text("x1,x2,label\n1.5,2.5,1\n")
    x, y = load_spiral(tmp_path, config)["train"]  # read back from disk, not regenerated
    assert x.tolist() == [[1.5, 2.5]] and y.tolist() == [1]


def test_atomic_directory_keeps_a_copy_another_process_renamed_first(tmp_path: Path) -> None:
    def fill(tmp: Path) -> None:
        (tmp / "ours").write_text("ours")
        (tmp_path / "data").mkdir()  # the other process wins the race meanwhile
        (tmp_path / "data" / "theirs").write_text("theirs")

    atomic_directory(tmp_path / "data", fill)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # ours removed, nothing half written left
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["theirs"]
    atomic_directory(tmp_path / "data", fill)  # present: fill is not called again


def test_atomic_directory_leaves_nothing_after_a_failed_fill(tmp_path: Path) -> None:
    def fill(tmp: Path) -> None:
        (tmp / "half").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_directory(tmp_path / "data", fill)
    assert list(tmp_path.iterdir()) == []


def test_read_split_rejects_a_wrong_header(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b,c\n0,0,0\n")
    with pytest.raises(ValueError, match="header"):
        read_split(tmp_path, "train")


# --- task ------------------------------------------------------------------------------------


def test_spiral_datasets_match_the_config(tmp_path: Path) -> None:
    config = _small_spiral(classes=3)
    splits = ToyTask(config, tmp_path, seed=0).datasets()
    assert [len(splits.train), len(splits.val), len(splits.test)] == [75, 30, 120]
    x, y = splits.train.tensors
    assert x.dtype == torch.float32 and x.shape == (75, 2) and y.dtype == torch.int64
    assert ToyTask(ToyConfig(), tmp_path, seed=0).datasets().val is None


def test_digits_datasets_are_stratified(tmp_path: Path) -> None:
    splits = ToyTask(ToyConfig(dataset="digits"), tmp_path, seed=0).datasets()
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797 and sizes[1] == round(0.1 * 1797) and sizes[2] == round(0.2 * 1797)
    for split in (splits.train, splits.val, splits.test):
        x, y = split.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        assert torch.unique(y).tolist() == list(range(10))
    no_val = ToyTask(ToyConfig(dataset="digits", val_fraction=0), tmp_path, seed=0).datasets()
    assert no_val.val is None and len(no_val.train) + len(no_val.test) == 1797
    assert torch.equal(no_val.test.tensors[1], splits.test.tensors[1])


def test_spiral_unlabeled_split_is_the_unlabeled_file_without_labels(tmp_path: Path) -> None:
    config = _small_spiral()
    splits = ToyTask(config, tmp_path, seed=0).datasets()
    expected, _ = read_split(spiral_dir(tmp_path, config), "unlabeled")
    assert len(splits.unlabeled) == 60
    item = splits.unlabeled[5]
    assert isinstance(item, torch.Tensor) and item.shape == (2,)  # an input alone, no target
    assert torch.equal(torch.stack([splits.unlabeled[i] for i in range(60)]), torch.from_numpy(expected))
    assert ToyTask(_small_spiral(unlabeled_per_class=0), tmp_path, seed=0).datasets().unlabeled is None


def test_digits_unlabeled_fraction_drops_labels_of_part_of_the_training_split(tmp_path: Path) -> None:
    plain = ToyTask(ToyConfig(dataset="digits"), tmp_path, seed=0).datasets()
    assert plain.unlabeled is None
    splits = ToyTask(ToyConfig(dataset="digits", unlabeled_fraction=0.25), tmp_path, seed=0).datasets()
    assert len(splits.unlabeled) == round(0.25 * len(plain.train))
    assert len(splits.train) + len(splits.unlabeled) == len(plain.train)
    assert torch.equal(splits.test.tensors[1], plain.test.tensors[1])
    assert torch.equal(splits.val.tensors[1], plain.val.tensors[1])
    assert splits.unlabeled[0].shape == (1, 8, 8)
    unlabeled = torch.stack([splits.unlabeled[i] for i in range(len(splits.unlabeled))])
    together = torch.cat([splits.train.tensors[0], unlabeled]).flatten(1)
    assert torch.equal(together.unique(dim=0), plain.train.tensors[0].flatten(1).unique(dim=0))
    assert torch.unique(splits.train.tensors[1]).tolist() == list(range(10))


def test_capabilities_follow_the_unlabeled_keys_of_the_configured_dataset() -> None:
    assert ToyConfig().capabilities() == frozenset()
    assert ToyConfig(unlabeled_per_class=5).capabilities() == {"unlabeled"}
    assert ToyConfig(dataset="digits", unlabeled_per_class=5).capabilities() == frozenset()
    assert ToyConfig(dataset="digits", unlabeled_fraction=0.1).capabilities() == {"unlabeled"}
    assert ToyConfig(unlabeled_fraction=0.1).capabilities() == frozenset()
    with pytest.raises(ValidationError):
        ToyConfig(dataset="digits", unlabeled_fraction=1.0)


def test_spiral_model_shapes_and_norm_calls(tmp_path: Path) -> None:
    norm = RecordingNorm(torch.nn.BatchNorm1d)
    model = ToyTask(ToyConfig(classes=3, hidden=[8, 6, 4]), tmp_path, seed=0).model(norm)
    assert norm.calls == [8, 6, 4]
    assert model(torch.randn(5, 2)).shape == (5, 3)


def test_digits_model_shapes_and_norm_calls(tmp_path: Path) -> None:
    norm = RecordingNorm(torch.nn.BatchNorm2d)
    model = ToyTask(ToyConfig(dataset="digits", channels=4), tmp_path, seed=0).model(norm)
    assert norm.calls == [4, 8, 8]
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_batch_stats_and_reduce(tmp_path: Path) -> None:
    task = ToyTask(ToyConfig(), tmp_path, seed=0)
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.2], [-1.0, 1.0]])
    targets = torch.tensor([0, 1, 1, 0, 0])
    stats = [task.batch_stats(outputs[:2], targets[:2]), task.batch_stats(outputs[2:], targets[2:])]
    assert (stats[0]["correct"], stats[0]["count"]) == (2.0, 2.0)
    expected_sum = F.cross_entropy(outputs[:2], targets[:2], reduction="sum").item()
    assert stats[0]["nll_sum"] == pytest.approx(expected_sum)
    metrics = task.reduce(stats)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["nll"] == pytest.approx(F.cross_entropy(outputs, targets).item())
    assert task.loss(outputs, targets).item() == pytest.approx(metrics["nll"])


# --- config ----------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(ValidationError):
        ToyConfig(hiden=[8])
    with pytest.raises(ValidationError):
        ToyConfig(classes="many")
    with pytest.raises(ValidationError):
        ToyConfig(classes=1)
    with pytest.raises(ValidationError):
        ToyConfig(val_fraction=0.5, test_fraction=0.5)


def test_config_norm_dims_and_label() -> None:
    assert ToyConfig().norm_dims() == frozenset({"1d"})
    assert ToyConfig(dataset="digits").norm_dims() == frozenset({"2d"})
    assert ToyConfig(dataset="digits").variant_label() == "digits"
    assert ToyConfig().axis_label("dataset", "digits") == "digits"  # a [matrix] dataset axis
    assert ToyConfig().axis_label("noise", 0.3) == "noise=0.3"
    assert ToyConfig().epochs == 20
