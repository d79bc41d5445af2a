"""The ``cell_segmentation`` task: metrics against hand computations, the KL per classified pixel,
the challenge's TIFF files and layout, the split, generated DIC-like cells, the augmentation's
alignment of image and mask, the FCN, every 2-d norm in it, and runs through the engine and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torchvision.transforms import InterpolationMode

from harness import engine
from harness.engine.recipe import TrialRequest, run_trial
from harness.plugins import load_registry
from harness_plugins.tasks.cells import PAPER_GAMMA, CellsConfig
from harness_plugins.tasks.cells.augment import IGNORE, augment, train_transform
from harness_plugins.tasks.cells.data import load_splits, split_frames
from harness_plugins.tasks.cells.formats import (
    read_foreground,
    read_image,
    read_instances,
    write_image,
    write_instances,
)
from harness_plugins.tasks.cells.layout import Frame, annotated_frames, image_path, mask_path
from harness_plugins.tasks.cells.loss import pixel_nll
from harness_plugins.tasks.cells.metrics import SegmentationSums
from harness_plugins.tasks.cells.model import FCN
from harness_plugins.tasks.cells.synthetic import SMOKE, cell_params, draw_cells, render, write_cells
from harness_plugins.tasks.cells.task import CellsTask

from conftest import REPO, assert_check_refuses, assert_every_trial_complete, run_cli

REGISTRY = load_registry()
TASK = REGISTRY.tasks["cell_segmentation"]
NORMS_2D = sorted(name for name, norm in REGISTRY.norms.items() if "2d" in norm.dims)
#: Norms that need what a segmenter does not give (a class label per sample, unlabeled inputs).
REFUSED = sorted(n for n in NORMS_2D if (REGISTRY.norms[n].needs | REGISTRY.norms[n].config().needs()) - TASK.provides)
#: A small FCN on small generated cells: seconds per epoch on a CPU.
SMALL = dict(dataset="cells", image_size=(24, 24), cell_radius=(4.0, 7.0), cell_images=6, channels=[6, 6, 4, 4],
             pool_after=[2, 4], kernel_size=3, elastic_alpha=12.0, elastic_sigma=1.5, batch_size=2)


# -- metrics ---------------------------------------------------------------------------------------


def _logits(foreground_probability: list[list[float]]) -> torch.Tensor:
    """1×2×H×W log-probabilities with p(foreground) as given."""
    p = torch.tensor(foreground_probability)
    return torch.stack([(1 - p).log(), p.log()])[None]


def test_metrics_against_hand_computation() -> None:
    """A 2×3 image: truth [[1 1 0] [0 1 0]], p(fg) [[.9 .4 .2] [.6 .7 .5]] (0.5: a tie, background).
    Predicted fg at (0,0), (1,0), (1,1): TP 2, FP 1, FN 1, correct 4 of 6."""
    outputs = _logits([[0.9, 0.4, 0.2], [0.6, 0.7, 0.5]])
    targets = torch.tensor([[[1, 1, 0], [0, 1, 0]]])
    sums = SegmentationSums()
    stats = sums.batch(outputs, targets)
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in stats.values())
    metrics = sums.reduce([stats])
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 6)
    assert metrics["iou"] == pytest.approx(2 / (2 + 1 + 1))
    assert metrics["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    nll = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.4) + math.log(0.7) + math.log(0.5)) / 6
    assert metrics["nll"] == pytest.approx(nll, rel=1e-6)


def test_metrics_add_up_over_batches_and_leave_unlabeled_pixels_out() -> None:
    sums = SegmentationSums()
    first = sums.batch(_logits([[0.9, 0.1]]), torch.tensor([[[1, 1]]]))  # TP 1, FN 1
    second = sums.batch(_logits([[0.8, 0.3]]), torch.tensor([[[0, IGNORE]]]))  # FP 1; the second not classified
    metrics = sums.reduce([{k: float(v) for k, v in s.items()} for s in (first, second)])
    assert metrics["pixel_accuracy"] == pytest.approx(1 / 3)
    assert metrics["iou"] == pytest.approx(1 / 3) and metrics["dice"] == pytest.approx(2 / 4)
    assert metrics["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.2)) / 3, rel=1e-6)
    # nothing to find and nothing found: IoU and Dice are 1
    empty = sums.reduce([sums.batch(_logits([[0.1, 0.2]]), torch.tensor([[[0, 0]]]))])
    assert (empty["iou"], empty["dice"], empty["pixel_accuracy"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no classified pixel"):
        sums.reduce([sums.batch(_logits([[0.1]]), torch.tensor([[[IGNORE]]]))])


def test_mc_outputs_as_log_mean_probabilities_score_alike() -> None:
    """An MC evaluation hands the metrics log(mean softmax): the same metrics as its logits."""
    logits = torch.randn(2, 2, 5, 7)
    targets = torch.randint(0, 2, (2, 5, 7))
    sums = SegmentationSums()
    a, b = sums.reduce([sums.batch(logits, targets)]), sums.reduce([sums.batch(logits.log_softmax(1), targets)])
    assert a == pytest.approx(b, rel=1e-6)


# -- the loss and the KL per classified pixel ------------------------------------------------------


def test_the_loss_sums_each_images_pixel_nll_and_skips_unlabeled_pixels() -> None:
    outputs = torch.randn(2, 2, 3, 4)
    targets = torch.randint(0, 2, (2, 3, 4))
    targets[1, 0, 0] = IGNORE
    logp = outputs.log_softmax(1)
    kept = targets != IGNORE
    expected = -logp.gather(1, targets.clamp_max(1)[:, None])[:, 0][kept].sum() / 2
    torch.testing.assert_close(pixel_nll(outputs, targets), expected)


def test_the_kl_is_weighted_kl_factor_per_classified_training_pixel(tmp_path: Path) -> None:
    """loss + loss_norm = P · (mean pixel NLL + kl_factor · Σ KL / (classified training pixels)),
    P the pixels per image: kl_factor is the KL weight per classified pixel."""
    config = CellsConfig(**{**SMALL, "elastic_alpha": 0.0})  # no deformation: every pixel classified
    norm = REGISTRY.norms["bayesian_scale"]
    norm_config = norm.config(base="analytic_norm", projection=True, kl_factor=0.1)
    impl = CellsTask(config, tmp_path, 0)
    splits = impl.datasets()
    net, layers = engine.build_net(impl, config, norm.layer(norm_config))
    model = engine.build_model(TASK, config, norm, norm_config, impl, net, splits, 0, norm_layers=layers)
    inputs, targets = (torch.stack(x) for x in zip(*[splits.train[i] for i in range(2)], strict=True))
    torch.manual_seed(0)
    losses = model(inputs, targets, mode="loss")
    kl = torch.stack([m.kl() for m in net.modules() if hasattr(m, "kl")]).sum()
    pixels = config.image_size[0] * config.image_size[1]
    assert len(splits.train) == 4  # 6 images, 30 % held out
    torch.testing.assert_close(losses["loss_norm"], 0.1 * kl / len(splits.train))
    torch.manual_seed(0)
    mean_nll = torch.nn.functional.cross_entropy(net(inputs), targets)
    per_pixel = (losses["loss"] + losses["loss_norm"]) / pixels
    torch.testing.assert_close(per_pixel, mean_nll + 0.1 * kl / (len(splits.train) * pixels))


# -- files and layout ------------------------------------------------------------------------------


def test_tiff_round_trip_keeps_16_bit_instance_ids_and_reads_foreground(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 1], [300, 0, 65535]], dtype=np.int64)
    write_instances(tmp_path / "man_seg000.tif", ids)
    raw = tifffile.imread(tmp_path / "man_seg000.tif")
    assert raw.dtype == np.uint16 and raw.tolist() == ids.tolist()
    assert read_instances(tmp_path / "man_seg000.tif").tolist() == ids.tolist()
    assert read_foreground(tmp_path / "man_seg000.tif").tolist() == [[0, 1, 1], [1, 0, 1]]
    with pytest.raises(ValueError, match="16 bits"):
        write_instances(tmp_path / "big.tif", np.array([[70000]]))
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="integer cell ids"):
        read_foreground(tmp_path / "float.tif")
    write_image(tmp_path / "t000.tif", np.array([[0, 255], [100, 100]]))
    assert tifffile.imread(tmp_path / "t000.tif").dtype == np.uint8
    image = read_image(tmp_path / "t000.tif")
    assert image.dtype == np.float32 and image.mean() == pytest.approx(0, abs=1e-6) and image.std() == pytest.approx(1)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="single grey 2-d"):
        read_image(tmp_path / "rgb.tif")


def test_only_segmented_frames_are_used_in_either_numbering(tmp_path: Path) -> None:
    for sequence, frames, segmented in (("01", [0, 1, 2, 3], [0, 2, 7]), ("02", [5], [5])):
        for index in frames:
            image_path(tmp_path, sequence, index).parent.mkdir(parents=True, exist_ok=True)
            write_image(image_path(tmp_path, sequence, index), np.zeros((4, 4)))
        for index in segmented:  # 01: frame 7 has a mask but no image
            mask_path(tmp_path, sequence, index).parent.mkdir(parents=True, exist_ok=True)
            write_instances(mask_path(tmp_path, sequence, index), np.zeros((4, 4)))
    (tmp_path / "03").mkdir()  # a sequence without segmentations
    write_image(tmp_path / "03" / "t0000.tif", np.zeros((4, 4)))
    (tmp_path / "03_GT" / "SEG").mkdir(parents=True)
    write_instances(tmp_path / "03_GT" / "SEG" / "man_seg0000.tif", np.zeros((4, 4)))  # 4 digits
    frames = annotated_frames(tmp_path)
    assert [(f.sequence, f.index) for f in frames] == [("01", 0), ("01", 2), ("02", 5), ("03", 0)]
    assert frames[0].image == tmp_path / "01" / "t000.tif"
    assert frames[0].mask == tmp_path / "01_GT" / "SEG" / "man_seg000.tif"


def test_missing_hela_names_the_layout_and_the_smoke_run(tmp_path: Path) -> None:
    key, why = CellsConfig().missing_data(tmp_path)
    assert key == "data_dir"
    for part in ("DIC-C2DH-HeLa/01/t000.tif", "01_GT/SEG/man_seg000.tif", "16-bit TIFF", "likewise 02", "--smoke",
                 "HARNESS_DATA"):
        assert part in why, part
    (tmp_path / "DIC-C2DH-HeLa" / "01").mkdir(parents=True)
    assert "lacks a sequence folder NN/ with its NN_GT/SEG/" in CellsConfig().missing_data(tmp_path)[1]
    assert CellsConfig(dataset="cells").missing_data(tmp_path) is None


def test_run_without_hela_stops_with_the_layout(workdir: Path) -> None:
    result = run_cli("run", str(REPO / "suites" / "hela.toml"), "--out", str(workdir), cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "task.data_dir" in result.stderr and "01_GT/SEG/man_seg000.tif" in result.stderr
    assert not (workdir / "runs" / "hela").exists()


def test_the_split_holds_out_30_percent_at_random_fixed_by_data_seed() -> None:
    frames = [Frame("01" if i < 9 else "02", i, Path(f"t{i}.tif"), Path(f"m{i}.tif")) for i in range(20)]
    train, held = split_frames(frames, 0.3, seed=0)
    assert (len(train), len(held)) == (14, 6) and sorted(train + held) == frames
    assert split_frames(frames, 0.3, seed=0) == (train, held)
    assert split_frames(frames, 0.3, seed=1)[1] != held
    assert held != frames[-6:]  # random, not the last frames
    assert [len(part) for part in split_frames(frames[:2], 0.01, seed=0)] == [1, 1]


# -- generated cells -------------------------------------------------------------------------------


def test_generated_cells_are_deterministic_dic_like_and_in_the_challenge_layout(tmp_path: Path) -> None:
    ids, path = draw_cells(np.random.default_rng(3), (96, 96), (10.0, 18.0))
    again, _ = draw_cells(np.random.default_rng(3), (96, 96), (10.0, 18.0))
    np.testing.assert_array_equal(ids, again)
    assert ids.dtype == np.uint16 and 0.2 < (ids > 0).mean() < 0.6
    assert np.unique(ids[ids > 0]).tolist() == list(range(1, int(ids.max()) + 1))  # ids 1…n, each visible
    image = render(np.random.default_rng(3), path, 14.0)
    assert image.dtype == np.uint8 and image.shape == (96, 96)
    # DIC relief: the shear derivative makes a cell's two sides opposite, a bright and a dark rim
    relief = image.astype(np.float32) - np.median(image)
    from scipy import ndimage

    inside = ids > 0
    upper_left = inside & ~ndimage.shift(inside, (3, 3), order=0)  # cell pixels whose up-left neighbour is not
    lower_right = inside & ~ndimage.shift(inside, (-3, -3), order=0)
    assert relief[upper_left].mean() - relief[lower_right].mean() < -10 or \
        relief[upper_left].mean() - relief[lower_right].mean() > 10
    params = cell_params(4, (32, 40), (5.0, 9.0), seed=1)
    first, second = write_cells(tmp_path / "a", params), write_cells(tmp_path / "b", params)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert sorted(str(f) for f in files if f.suffix == ".tif") == [
        "01/t000.tif", "01/t001.tif", "01/t002.tif", "01/t003.tif", "01_GT/SEG/man_seg000.tif",
        "01_GT/SEG/man_seg002.tif", "02/t000.tif", "02/t001.tif", "02/t002.tif", "02/t003.tif",
        "02_GT/SEG/man_seg000.tif", "02_GT/SEG/man_seg002.tif"]
    assert tifffile.imread(first / "01_GT/SEG/man_seg000.tif").dtype == np.uint16
    assert json.loads((first / "meta.json").read_text()) == params
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_smoke_writes_cells_in_the_hela_layout_and_keeps_the_network(tmp_path: Path) -> None:
    config = CellsConfig(channels=[8, 8, 4], pool_after=[2], kernel_size=5)
    small = config.smoke(tmp_path)
    assert (small.dataset, small.epochs, small.image_size, small.channels, small.kernel_size) == (
        "hela", 1, SMOKE["size"], [8, 8, 4], 5)
    assert small.missing_data(tmp_path) is None
    splits = load_splits(small, tmp_path)
    assert (len(splits.train), len(splits.test)) == (7, 3) and splits.val is None
    image, target = splits.test[0]
    assert image.shape == (1, *SMOKE["size"]) and target.dtype == torch.int64
    assert set(target.unique().tolist()) == {0, 1}


# -- augmentation ----------------------------------------------------------------------------------


def test_flips_and_deformation_move_image_and_mask_together() -> None:
    """The mask's own values as an image, resampled with nearest neighbours as the mask is: the
    deformed image equals the deformed mask wherever the mask is labeled, and is the image's fill
    where it is not."""
    _, path = draw_cells(np.random.default_rng(0), (40, 40), (6.0, 10.0))
    mask = torch.from_numpy((path > 0).astype(np.uint8))
    transform = train_transform(True, alpha=60.0, sigma=3.0, interpolation=InterpolationMode.NEAREST)
    moved = 0
    for seed in range(4):
        torch.manual_seed(seed)
        image, target = augment(transform, mask[None].float(), mask)
        assert image.shape == (1, 40, 40) and target.shape == (40, 40) and target.dtype == torch.uint8
        labeled = target != IGNORE
        torch.testing.assert_close(image[0][labeled], target[labeled].float())
        assert (image[0][~labeled] == 0).all()
        moved += int((target[labeled] != mask[labeled]).sum())
    assert moved > 0  # the transform did something
    # the training transform (bilinear image) keeps the image aligned too: its foreground is where the mask's is
    torch.manual_seed(0)
    image, target = augment(train_transform(True, 60.0, 3.0), mask[None].float(), mask)
    labeled = target != IGNORE
    agree = ((image[0] > 0.5) == (target == 1))[labeled].float().mean()
    assert agree > 0.97


# -- the network -----------------------------------------------------------------------------------


def test_the_default_network_is_the_papers_fcn_with_a_dense_output() -> None:
    config = CellsConfig()
    net = FCN(torch.nn.BatchNorm2d, config.channels, config.pool_after, config.kernel_size)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 32, 32, 16, 16, 8, 8, 8, 4, 4, 2]
    assert [c.kernel_size for c in convs] == [(9, 9)] * 11 + [(1, 1)]
    assert len([m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 11
    assert len([m for m in net.modules() if isinstance(m, torch.nn.AvgPool2d)]) == 5
    assert 600e3 < sum(p.numel() for p in net.parameters()) < 700e3
    small = FCN(torch.nn.BatchNorm2d, [4, 4, 2], [2, 3], 9)
    assert small(torch.randn(2, 1, 37, 50)).shape == (2, 2, 37, 50)
    assert (config.epochs, config.optimizer.name, config.schedule.name) == (3000, "adam", "exponential")
    assert config.schedule.gamma ** 1000 == pytest.approx(0.1) and PAPER_GAMMA ** 1000 == pytest.approx(0.1)


def test_configuration_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CellsConfig(kernel_size=4)
    with pytest.raises(ValueError, match="pool_after"):
        CellsConfig(channels=[4, 4], pool_after=[3])
    with pytest.raises(ValueError, match="elastic_sigma"):
        CellsConfig(image_size=(32, 32), elastic_sigma=8.0)


def test_every_2d_norm_trains_a_step_in_the_fcn_or_is_refused_by_check(tmp_path: Path) -> None:
    """The pre-flight path (the norm in the FCN, its protocol, forward, loss, backward, optimizer
    step) for each 2-d norm the task admits; the others are refused by ``harness check``."""
    from harness.preflight import check_pair

    config = CellsConfig(**SMALL)
    failures = {}
    for name in sorted(set(NORMS_2D) - set(REFUSED)):
        norm = REGISTRY.norms[name]
        result = check_pair(TASK, config, norm, norm.config(), data_root=tmp_path)
        if result.failure is not None or result.no_grad or not math.isfinite(result.loss):
            failures[name] = (str(result.failure), result.no_grad[:3])
    assert not failures, failures


def test_check_refuses_the_norms_that_need_labels_or_unlabeled_inputs(workdir: Path) -> None:
    assert {"balanced_bn", "unsupervised_bn"} <= set(REFUSED) and "bayesian_scale" not in REFUSED
    norms = "".join(f'\n[[norm]]\nuse = "{n}"\n' for n in ["batchnorm", *REFUSED])
    suite = workdir / "refused.toml"
    suite.write_text(_SUITE.format(name="refused") + norms)
    assert_check_refuses(suite, REFUSED, workdir)


# -- end to end ------------------------------------------------------------------------------------

_SUITE = """
[suite]
name = "{name}"
version = 1
seeds = [0]
metric = "nll"
baseline = "batchnorm"
data_root = "data"

[task]
use = "cell_segmentation"
dataset = "cells"
cell_images = 6
image_size = [24, 24]
cell_radius = [4.0, 7.0]
channels = [6, 6, 4, 4]
pool_after = [2, 4]
kernel_size = 3
elastic_alpha = 12.0
elastic_sigma = 1.5
epochs = 2
batch_size = 2
val_interval = 1
"""


def test_a_tiny_suite_runs_bn_and_the_bayesian_norms_through_the_cli(workdir: Path) -> None:
    suite = workdir / "tiny_cells.toml"
    suite.write_text(_SUITE.format(name="tiny_cells") + '\n[[norm]]\nuse = "batchnorm"\n'
                     + "".join(f'\n[[norm]]\nuse = "bayesian_scale"\nlabel = "{base}-bayes"\nbase = "{base}"\n'
                               f"projection = true\nkl_factor = 0.1\nmc_samples = [3]\n"
                               for base in ("weightnorm", "analytic_norm")))
    result = run_cli("run", str(suite), "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_trial_complete(workdir, "tiny_cells", planned=3)
    board = json.loads((workdir / "leaderboard" / "tiny_cells.json").read_text())
    for trial in board["trials"]:
        mc = [""] if trial["norm"] == "batchnorm" else ["", "mc3/"]
        for prefix in mc:
            assert 0 <= trial[f"metric.{prefix}pixel_accuracy"] <= 1 and 0 <= trial[f"metric.{prefix}dice"] <= 1
            assert 0 <= trial[f"metric.{prefix}iou"] <= 1 and math.isfinite(trial[f"metric.{prefix}nll"])


def test_validation_nll_is_recorded_every_epoch_on_the_held_out_images(tmp_path: Path) -> None:
    config = CellsConfig(**{**SMALL, "epochs": 3})
    norm = REGISTRY.norms["batchnorm"]
    result = run_trial(TrialRequest(task=TASK, config=config, norm=norm, norm_config=norm.config(), seed=0,
                                    work_dir=tmp_path / "trial", data_root=tmp_path / "data"))
    for name in ("nll", "pixel_accuracy", "iou", "dice"):
        assert len(result.curves[f"val_{name}"]) == 3
    assert result.curves["val_nll"][-1] == pytest.approx(result.metrics["nll"])  # the same held-out images


@pytest.mark.slow
def test_the_fcn_learns_generated_cells(tmp_path: Path) -> None:
    """A few hundred steps on generated cells move the held-out metrics far from chance."""
    config = CellsConfig(dataset="cells", image_size=(48, 48), cell_radius=(6.0, 11.0), channels=[16, 16, 8, 8, 8],
                         pool_after=[2, 4], kernel_size=5, elastic_alpha=30.0, elastic_sigma=2.0, epochs=20)
    norm = REGISTRY.norms["batchnorm"]
    result = run_trial(TrialRequest(task=TASK, config=config, norm=norm, norm_config=norm.config(), seed=0,
                                    work_dir=tmp_path / "trial", data_root=tmp_path / "data"))
    assert result.metrics["pixel_accuracy"] > 0.8 and result.metrics["dice"] > 0.7, result.metrics
