"""The ``depth`` task: metrics against hand computations, KITTI's files and layout, the labeled and
unlabeled frames, DispNet with every norm, generated scenes, and a run through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.plugins import load_registry
from harness_plugins.tasks.depth import DepthConfig
from harness_plugins.tasks.depth.data import (
    IN_CROP,
    IN_IMAGE,
    eval_target,
    labeled_mask,
    load_splits,
    sparse_resize,
    split_frames,
)
from harness_plugins.tasks.depth.formats import read_depth, write_depth, write_image
from harness_plugins.tasks.depth.layout import (
    Frame,
    depth_path,
    image_path,
    kitti_frames,
    read_list,
)
from harness_plugins.tasks.depth.loss import scale_invariant_loss
from harness_plugins.tasks.depth.metrics import DepthSums, garg_crop, image_errors, resize_to_targets
from harness_plugins.tasks.depth.model import DispNet, bilinear
from harness_plugins.tasks.depth.scenes import (
    CAMERA_HEIGHT,
    FOCAL,
    HORIZON,
    MAX_DEPTH,
    draw_world,
    lidar_samples,
    render_frame,
    scene_params,
    write_scenes,
    write_smoke_kitti,
)
from harness_plugins.tasks.depth.task import DepthTask

from conftest import REPO, assert_check_refuses, assert_every_trial_complete, run_cli

REGISTRY = load_registry()
NORMS_2D = sorted(name for name, norm in REGISTRY.norms.items() if "2d" in norm.dims)
PROVIDED = REGISTRY.tasks["depth"].provides | {"unlabeled"}
#: Norms that need what a depth regressor cannot give (class labels, class scores).
REFUSED = sorted(n for n in NORMS_2D if (REGISTRY.norms[n].needs | REGISTRY.norms[n].config().needs()) - PROVIDED)
#: A norm that cannot pass the network: analytic normalization has no moment rule for the decoder's
#: upsampling (nor for concatenation or the sigmoid); the pre-flight refuses it, naming the operation.
CANNOT_PROPAGATE = {"analytic_norm"}
SMALL = dict(image_size=(32, 96), width=4, levels=4, scales=3)


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_against_hand_computation() -> None:
    """Three valid pixels (d, p) = (2, 1), (4, 5), (10, 100 → clamped to 80); one without ground truth."""
    gt = torch.tensor([[[2.0, 4.0], [0.0, 10.0]]])
    pred = torch.tensor([[[1.0, 5.0], [7.0, 100.0]]])
    errors, has = image_errors(pred, gt, gt > 0)
    abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 = errors[0].tolist()
    assert has.tolist() == [True]
    assert abs_rel == pytest.approx((1 / 2 + 1 / 4 + 70 / 10) / 3)
    assert sq_rel == pytest.approx((1 / 2 + 1 / 4 + 4900 / 10) / 3)
    assert rmse == pytest.approx(math.sqrt((1 + 1 + 4900) / 3))
    assert rmse_log == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(5 / 4) ** 2 + math.log(8) ** 2) / 3))
    # max(d/p, p/d) = 2, 1.25, 8: 1.25 is not below 1.25, but below 1.25² and 1.25³
    assert (a1, a2, a3) == pytest.approx((0, 1 / 3, 1 / 3))


def test_garg_crop_is_the_reference_codes_integers() -> None:
    assert garg_crop(375, 1242) == (153, 371, 44, 1197)
    # near integers, where float32 would round: 0.40810811 · 370 = 151.0000007, 0.99189189 · 370 = 366.9999993
    assert garg_crop(370, 1224) == (151, 366, 43, 1180)


def test_evaluation_keeps_valid_pixels_inside_the_garg_crop_only() -> None:
    """A 10×20 map on a 12×24 canvas: Garg crop rows 4..8, columns 0..18. The prediction is 4.5 m
    everywhere. Inside the crop the ground truth is 5 m, except one pixel at 8 m, one at 80 m
    (not below 80) and one missing; outside it, wrong values that must not count."""
    gt = np.zeros((10, 20), dtype=np.float32)
    gt[4:9, 0:19] = 5.0
    gt[5, 3], gt[6, 7], gt[7, 9] = 8.0, 80.0, 0.0
    gt[0, 0], gt[9, 19], gt[3, 5] = 50.0, 60.0, 70.0  # outside the crop
    target = torch.from_numpy(eval_target(gt, (12, 24)))[None]
    assert target[0, 1, :10, :20].eq(IN_IMAGE).sum() == 200 - 5 * 19
    assert target[0, 1, 4:9, 0:19].eq(IN_CROP).all() and target[0, 1, 10:].eq(0).all()
    stats = DepthSums().batch(torch.full((1, 2, 5, 10), 4.5), target)
    n = 5 * 19 - 2  # the 80 m and the missing pixel drop out: n − 1 pixels at 5 m, one at 8 m
    assert float(stats["count"]) == 1
    assert float(stats["abs_rel"]) == pytest.approx(((n - 1) * 0.5 / 5 + 3.5 / 8) / n, rel=1e-5)
    assert float(stats["sq_rel"]) == pytest.approx(((n - 1) * 0.25 / 5 + 12.25 / 8) / n, rel=1e-5)
    assert float(stats["rmse"]) == pytest.approx(math.sqrt(((n - 1) * 0.25 + 12.25) / n), rel=1e-5)
    assert float(stats["rmse_log"]) == pytest.approx(
        math.sqrt(((n - 1) * math.log(5 / 4.5) ** 2 + math.log(8 / 4.5) ** 2) / n), rel=1e-5)
    # 5/4.5 = 1.11 passes every threshold; 8/4.5 = 1.78 only 1.25³ = 1.95
    assert [float(stats[k]) for k in ("a1", "a2", "a3")] == pytest.approx([(n - 1) / n, (n - 1) / n, 1.0])


def test_resizing_to_each_target_is_bilinear_interpolation_to_its_size() -> None:
    pred = torch.rand(2, 1, 5, 7) * 10 + 1
    sizes = [(9, 11), (6, 13)]
    image = torch.zeros(2, 10, 14, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        image[i, :h, :w] = True
    resized = resize_to_targets(pred, image)
    for i, (h, w) in enumerate(sizes):
        expected = F.interpolate(pred[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(resized[i, :h, :w], expected)


def test_batch_statistics_are_sums_on_the_device_and_reduce_averages_per_image() -> None:
    sums = DepthSums()
    targets = torch.from_numpy(np.stack([eval_target(np.full((10, 20), d, dtype=np.float32), (10, 20))
                                         for d in (5.0, 10.0, 20.0)]))
    outputs = torch.full((3, 1, 10, 20), 10.0)
    first, second = sums.batch(outputs[:2], targets[:2]), sums.batch(outputs[2:], targets[2:])
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in first.values())
    metrics = sums.reduce([{k: float(v) for k, v in s.items()} for s in (first, second)])
    assert metrics["abs_rel"] == pytest.approx((1 + 0 + 0.5) / 3)  # per image: |5-10|/5, 0, |20-10|/20
    assert metrics["rmse"] == pytest.approx((5 + 0 + 10) / 3)
    assert metrics["a1"] == pytest.approx(1 / 3)


def test_the_loss_is_the_scale_invariant_log_loss_on_valid_pixels_at_every_scale() -> None:
    """Scale 1 is exact (0); scale 2 is off by a factor 2 on both valid pixels: g = log 2, so
    mean g² − ½ (mean g)² = ½ log² 2. A second image without ground truth is not counted."""
    targets = torch.tensor([[[[2.0, 0.0, 4.0]]], [[[0.0, 0.0, 0.0]]]])
    outputs = torch.tensor([[[[2.0, 9.0, 4.0]], [[4.0, 1.0, 8.0]]], [[[3.0, 3.0, 3.0]], [[3.0, 3.0, 3.0]]]])
    loss = scale_invariant_loss(outputs, targets)
    assert float(loss) == pytest.approx((0 + 0.5 * math.log(2) ** 2) / 2)


# -- files and layout ------------------------------------------------------------------------------


def test_depth_png_is_16_bit_with_depth_value_over_256(tmp_path: Path) -> None:
    depth = np.array([[0.0, 1 / 256, 12.34], [80.0, 255.99, 3.0]], dtype=np.float32)
    write_depth(tmp_path / "d.png", depth)
    with Image.open(tmp_path / "d.png") as picture:
        assert picture.mode == "I;16"
        raw = np.asarray(picture)
    assert raw.tolist() == np.round(depth.astype(np.float64) * 256).astype(int).tolist()
    np.testing.assert_array_equal(read_depth(tmp_path / "d.png"), raw / np.float32(256))
    Image.fromarray(np.array([[5120, 0]], dtype=np.uint16)).save(tmp_path / "kitti.png")
    assert read_depth(tmp_path / "kitti.png").tolist() == [[20.0, 0.0]]
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(ValueError, match="16-bit"):
        read_depth(tmp_path / "eight.png")


def test_sparse_resize_moves_each_measurement_and_keeps_the_nearest() -> None:
    depth = np.zeros((4, 6), dtype=np.float32)
    depth[0, 0], depth[1, 1] = 9.0, 3.0  # both land on (0, 0) at 2×3
    depth[3, 5] = 7.0
    out = sparse_resize(depth, (2, 3))
    assert out.tolist() == [[3.0, 0.0, 0.0], [0.0, 0.0, 7.0]]


def _kitti_tree(root: Path, drives: dict[str, tuple[str, list[int]]], no_image: tuple[str, int] | None = None) -> None:
    """drives: name -> (data_depth_annotated part, frame indices); image_02 only."""
    for drive, (part, frames) in drives.items():
        for index in frames:
            for path in (image_path(root, drive, "image_02", index), depth_path(root, part, drive, "image_02", index)):
                path.parent.mkdir(parents=True, exist_ok=True)
            if (drive, index) != no_image:
                write_image(image_path(root, drive, "image_02", index), np.zeros((4, 6, 3), dtype=np.uint8))
            write_depth(depth_path(root, part, drive, "image_02", index), np.full((4, 6), 10.0))


def test_kitti_frames_without_split_lists_test_on_the_val_folder(tmp_path: Path) -> None:
    a, b, c = (f"2011_09_26_drive_000{i}_sync" for i in (1, 2, 3))
    _kitti_tree(tmp_path, {a: ("train", [5, 6, 7]), b: ("train", [5]), c: ("val", [8, 9])}, no_image=(a, 7))
    train, test = kitti_frames(tmp_path)
    assert [(f.drive, f.index) for f in train] == [(a, 5), (a, 6), (b, 5)]  # a/7 has no raw image
    assert [(f.drive, f.index) for f in test] == [(c, 8), (c, 9)]
    assert train[0].image == tmp_path / "raw" / "2011_09_26" / a / "image_02" / "data" / "0000000005.png"


def test_kitti_frames_follow_the_eigen_lists_in_either_format(tmp_path: Path) -> None:
    a, b, c = (f"2011_09_26_drive_000{i}_sync" for i in (1, 2, 3))
    _kitti_tree(tmp_path, {a: ("train", [5, 6]), b: ("val", [5, 6]), c: ("val", [5])})
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "eigen_test_files.txt").write_text(
        f"2011_09_26/{b}/image_02/data/0000000006.png 2011_09_26/{b}/image_03/data/0000000006.png\n"
        f"2011_09_26/{c} 5 l\n2011_09_26/{c} 99 l\n")  # frame 99 has no depth map: left out
    train, test = kitti_frames(tmp_path)
    assert [(f.drive, f.index) for f in test] == [(b, 6), (c, 5)]
    assert [(f.drive, f.index) for f in train] == [(a, 5), (a, 6)]  # no frame of a test drive
    (tmp_path / "splits" / "eigen_train_files.txt").write_text(f"2011_09_26/{a} 6 l\n2011_09_26/{b} 5 l\n")
    train, _ = kitti_frames(tmp_path)
    assert [(f.drive, f.index) for f in train] == [(a, 6)]
    (tmp_path / "splits" / "eigen_train_files.txt").write_text("what is this\n")
    with pytest.raises(ValueError, match="eigen_train_files.txt:1"):
        read_list(tmp_path / "splits" / "eigen_train_files.txt")


def test_missing_kitti_names_the_layout_and_the_smoke_run(tmp_path: Path) -> None:
    key, why = DepthConfig().missing_data(tmp_path)
    assert key == "data_dir"
    for part in ("raw/<date>/<date>_drive_<nnnn>_sync/image_02/data/<frame>.png",
                 "data_depth_annotated/{train,val}/", "16-bit PNG, depth = value/256 m", "eigen_test_files.txt",
                 "--smoke", "HARNESS_DATA"):
        assert part in why, part
    assert DepthConfig(dataset="scenes").missing_data(tmp_path) is None


def test_run_without_kitti_stops_with_the_layout(workdir: Path) -> None:
    result = run_cli("run", str(REPO / "suites" / "kitti_depth.toml"), "--out", str(workdir), cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "task.data_dir" in result.stderr and "data_depth_annotated" in result.stderr
    assert not (workdir / "runs" / "kitti_depth").exists()


# -- labeled and unlabeled frames ------------------------------------------------------------------


def _frames(count: int) -> list[Frame]:
    return [Frame(f"2011_09_26_drive_{i // 50:04d}_sync", "image_02", i % 50, Path(f"{i}.png"), Path(f"d{i}.png"))
            for i in range(count)]


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.1, 0.05, 0.3])
def test_labeled_frames_are_evenly_spaced_like_a_slower_sensor(fraction: float) -> None:
    keep = labeled_mask(200, fraction, np.random.default_rng(3))
    assert keep.sum() in (math.floor(200 * fraction), math.ceil(200 * fraction))
    gaps = np.diff(np.flatnonzero(keep))
    assert set(gaps.tolist()) <= {math.floor(1 / fraction), math.ceil(1 / fraction)}


def test_the_labeled_fraction_keeps_every_image_and_the_validation_frames() -> None:
    frames = _frames(400)
    splits = {f: split_frames(frames, DepthConfig(labeled_fraction=f, val_fraction=0.1, data_seed=7))
              for f in (1.0, 0.5, 0.25, 0.1, 0.05)}
    full_labeled, _, full_val = splits[1.0]
    for fraction, (labeled, unlabeled, val) in splits.items():
        assert val == full_val and len(val) == 40
        assert sorted(labeled + unlabeled) == sorted(full_labeled)  # the same 360 images at any fraction
        assert abs(len(labeled) - 360 * fraction) < 1 and not set(labeled) & set(unlabeled)
    assert split_frames(frames, DepthConfig(labeled_fraction=0.1, val_fraction=0.1, data_seed=7)) == splits[0.1]
    assert split_frames(frames, DepthConfig(labeled_fraction=0.1, val_fraction=0.1, data_seed=8))[0] != splits[0.1][0]


def test_splits_read_from_generated_kitti_files(tmp_path: Path) -> None:
    write_smoke_kitti(tmp_path / "kitti-scenes")
    config = DepthConfig(data_dir="kitti-scenes", labeled_fraction=0.25, val_fraction=0.1, image_size=(32, 96),
                         gt_canvas=(80, 256))
    splits = load_splits(config, tmp_path)
    assert (len(splits.train), len(splits.unlabeled), len(splits.val), len(splits.test)) == (36, 27, 4, 8)
    assert len(splits.train.dataset) == 9  # an epoch as long as the 36 images: the labeled ones repeated
    assert [splits.train[i + 9][1].sum() for i in range(3)] == [splits.train[i][1].sum() for i in range(3)]
    per_pass = load_splits(config.model_copy(update={"epoch_size": "labeled"}), tmp_path).train
    assert len(per_pass) == 9
    image, depth = splits.train[0]
    assert image.shape == (3, 32, 96) and depth.shape == (1, 32, 96) and 0 < float((depth > 0).float().mean()) < 1
    assert splits.unlabeled[0].shape == (3, 32, 96)
    image, target = splits.test[0]
    assert target.shape == (2, 80, 256) and set(target[1].unique().tolist()) == {0.0, IN_IMAGE, IN_CROP}
    assert config.capabilities() == {"unlabeled"}
    assert config.model_copy(update={"labeled_fraction": 1.0}).capabilities() == frozenset()


# -- generated scenes ------------------------------------------------------------------------------


def test_drives_are_deterministic_sparse_like_lidar_and_move_forward(tmp_path: Path) -> None:
    world = draw_world(np.random.default_rng([0, 0, 1]))
    image, depth = render_frame(world, 3, np.random.default_rng(5), (64, 208))
    again, depth_again = render_frame(world, 3, np.random.default_rng(5), (64, 208))
    assert image.dtype == np.uint8 and image.shape == (64, 208, 3)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(depth, depth_again)
    assert (depth[:20] == 0).all() and (depth[-1] > 0).all()  # sky above the horizon, road below
    # the road straight ahead (boxes stand beside the path) lies where the camera's geometry puts it
    road = FOCAL * 208 * CAMERA_HEIGHT / (63.5 - HORIZON * 64)
    later, depth_later = render_frame(world, 10, np.random.default_rng(5), (64, 208))
    assert depth[-1, 104] == pytest.approx(road) and depth_later[-1, 104] == pytest.approx(road)
    assert not np.array_equal(image, later)  # the camera moved on
    sparse = lidar_samples(np.random.default_rng(0), depth)
    assert 0.1 < (sparse > 0).mean() < 0.5 and sparse.max() <= MAX_DEPTH
    assert set(np.unique(sparse[sparse > 0])) <= set(np.unique(depth))
    params = scene_params(6, 2, (24, 80), seed=1)
    first, second = write_scenes(tmp_path / "a", params), write_scenes(tmp_path / "b", params)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert json.loads((first / "meta.json").read_text()) == params
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_smoke_writes_scenes_in_the_kitti_layout_and_keeps_the_network(tmp_path: Path) -> None:
    config = DepthConfig(labeled_fraction=0.1, width=16)
    small = config.smoke(tmp_path)
    assert (small.dataset, small.epochs, small.width, small.levels, small.labeled_fraction) == ("kitti", 1, 16, 7, 0.1)
    assert small.missing_data(tmp_path) is None
    train, test = kitti_frames(tmp_path / "kitti-scenes")
    assert (len(train), len(test)) == (40, 8)


# -- the network -----------------------------------------------------------------------------------


def test_dispnet_returns_every_scales_depth_at_the_input_size_within_the_heads_range() -> None:
    calls: list[int] = []

    def norm_layer(channels: int) -> torch.nn.Module:
        calls.append(channels)
        return torch.nn.BatchNorm2d(channels)

    net = DispNet(norm_layer, width=4, levels=4, scales=3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(calls) == 4 * 4 and len(convs) == 4 * 4 + 3  # a norm after every conv but the 3 predictions
    out = net(torch.randn(2, 3, 30, 50)).detach()  # any size: each upsampling takes its skip's size
    assert out.shape == (2, 3, 30, 50)
    low, high = 1 / (0.4 + 0.0125), 80.0
    assert float(out.min()) >= low and float(out.max()) <= high
    for bias, bound in ((1e4, low), (-1e4, high)):
        with torch.no_grad():
            for head in net.predict:
                head.bias.fill_(bias)
        torch.testing.assert_close(net(torch.randn(2, 3, 30, 50)), torch.full((2, 3, 30, 50), bound))


@pytest.mark.parametrize(("size_in", "size_out"), [((5, 7), (30, 50)), ((30, 50), (5, 7)), ((8, 26), (64, 208))])
def test_the_networks_bilinear_upsampling_is_torchs(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    """The interpolation-matrix form (deterministic backward on CUDA) gives F.interpolate's values."""
    x = torch.rand(2, 1, *size_in)
    expected = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(bilinear(x, size_out), expected, rtol=1e-6, atol=1e-6)


def test_the_default_network_is_sfmlearners_dispnet() -> None:
    net = DispNet(torch.nn.BatchNorm2d)
    widths = [level[0][0].out_channels for level in net.encoder]
    assert widths == [32, 64, 128, 256, 512, 512, 512]
    assert [block[0].out_channels for block in net.merge] == [512, 512, 256, 128, 64, 32, 16]
    assert 30e6 < sum(p.numel() for p in net.parameters()) < 33e6
    config = DepthConfig()
    assert (config.image_size, config.epochs, config.batch_size, config.optimizer.name, config.optimizer.lr) == (
        (256, 832), 160, 128, "adam", 2e-4)


def test_every_2d_norm_trains_a_step_in_dispnet_or_is_refused_by_the_preflight(tmp_path: Path) -> None:
    """The pre-flight path (the norm in DispNet, its protocol with the unlabeled split, forward,
    loss, backward, optimizer step) for each 2-d norm the task's capabilities admit."""
    from harness.preflight import check_pair

    task = REGISTRY.tasks["depth"]
    config = DepthConfig(**SMALL, labeled_fraction=0.5, batch_size=2)
    failures, refused = {}, {}
    for name in sorted(set(NORMS_2D) - set(REFUSED)):
        norm = REGISTRY.norms[name]
        result = check_pair(task, config, norm, norm.config(), data_root=tmp_path)
        if name in CANNOT_PROPAGATE:
            refused[name] = str(result.failure)
        elif result.failure is not None or result.no_grad or not math.isfinite(result.loss):
            failures[name] = (str(result.failure), result.no_grad[:3])
    assert not failures, failures
    assert set(refused) == CANNOT_PROPAGATE and "interpolate" in refused["analytic_norm"], refused


def test_check_refuses_the_norms_that_need_labels_or_class_scores(workdir: Path) -> None:
    assert {"balanced_bn", "mc_batchnorm", "bayesian_scale"} <= set(REFUSED)
    norms = "".join(f'\n[[norm]]\nuse = "{n}"\n' for n in ["batchnorm", *REFUSED])
    suite = workdir / "refused.toml"
    suite.write_text(_SUITE.format(name="refused", fraction=0.5) + norms)
    assert_check_refuses(suite, REFUSED, workdir)


# -- end to end ------------------------------------------------------------------------------------

_SUITE = """
[suite]
name = "{name}"
version = 1
seeds = [0]
metric = "a1"
baseline = "batchnorm"
data_root = "data"

[task]
use = "depth"
dataset = "scenes"
labeled_fraction = {fraction}
scene_frames = 24
scene_test_frames = 6
scene_size = [24, 80]
image_size = [16, 48]
width = 4
levels = 3
scales = 2
epochs = 2
batch_size = 4
val_fraction = 0.2
"""


def test_a_tiny_suite_runs_bn_and_unsupervised_bn_through_the_cli(workdir: Path) -> None:
    suite = workdir / "tiny_depth.toml"
    suite.write_text(_SUITE.format(name="tiny_depth", fraction=0.5)
                     + '\n[[norm]]\nuse = "batchnorm"\n\n[[norm]]\nuse = "unsupervised_bn"\nratio = 1\n')
    result = run_cli("run", str(suite), "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_trial_complete(workdir, "tiny_depth", planned=2)
    board = json.loads((workdir / "leaderboard" / "tiny_depth.json").read_text())
    for trial in board["trials"]:
        assert 0 <= trial["metric.a1"] <= 1 and trial["metric.abs_rel"] > 0 and math.isfinite(trial["metric.rmse"])


def test_the_network_learns_generated_drives(tmp_path: Path) -> None:
    """150 steps on generated drives move the metrics far (untrained: abs_rel 0.58, δ<1.25 0;
    trained: about 0.10 and 0.88), so the data carry depth a network can learn."""
    torch.manual_seed(0)
    config = DepthConfig(dataset="scenes", scene_frames=160, scene_test_frames=40, scene_size=(48, 160),
                         image_size=(32, 104), width=8, levels=4, scales=3, val_fraction=0.0)
    task = DepthTask(config, tmp_path, 0)
    splits = task.datasets()
    net = task.model(torch.nn.BatchNorm2d)
    test = torch.utils.data.DataLoader(splits.test, batch_size=20)

    def evaluate() -> dict[str, float]:
        net.eval()
        with torch.no_grad():
            stats = [{k: float(v) for k, v in task.batch_stats(net(x), y).items()} for x, y in test]
        net.train()
        return task.reduce(stats)

    before = evaluate()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=16, shuffle=True)
    for _ in range(15):
        for x, y in loader:
            optimizer.zero_grad()
            task.loss(net(x), y).backward()
            optimizer.step()
    after = evaluate()
    assert after["abs_rel"] < 0.4 * before["abs_rel"] and after["rmse"] < 0.5 * before["rmse"], (before, after)
    assert after["a1"] > 0.6 > before["a1"], (before, after)
