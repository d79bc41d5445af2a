"""The ``detection`` task: generated COCO data, mmdet's detectors with every norm, COCO's metric,
and Faster R-CNN and Mask R-CNN trials end to end through the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import Task
from harness.plugins import load_registry
from harness_plugins.tasks.detection import DetectionConfig
from harness_plugins.tasks.detection.shapes import CLASSES, write_shapes_coco

from conftest import REPO, assert_check_refuses, assert_every_trial_complete, run_cli

needs_mmdet = pytest.mark.skipif(importlib.util.find_spec("mmdet") is None,
                                 reason="mmdet is not installed (make setup installs it)")
REGISTRY = load_registry()
NORMS_2D = sorted(name for name, norm in REGISTRY.norms.items() if "2d" in norm.dims)
#: What detection cannot give a norm: same-shaped input batches, class scores, labels, unlabeled data.
REFUSED = sorted(name for name in NORMS_2D if REGISTRY.norms[name].needs or REGISTRY.norms[name].config().needs())

DETECTION_SUITE = """
[suite]
name = "{name}"
version = 1
seeds = [0]
metric = "box_ap"

[task]
use = "detection"
model = "{model}"
depth = 18
epochs = {epochs}
batch_size = 4
image_scale = [96, 96]
proposals = 100
rois_per_image = 64
val_fraction = 0.25
data_dir = "shapes"
schedule = {{ name = "constant" }}
optimizer = {{ name = "sgd", lr = 0.02, momentum = 0.9, weight_decay = 1e-4 }}
"""


def _suite(directory: Path, *, name: str, model: str, norms: list[str], epochs: int = 1, train: int = 16,
           val: int = 8, devices: int = 1) -> Path:
    write_shapes_coco(directory / "data" / "shapes", train=train, val=val, size=96)
    text = DETECTION_SUITE.format(name=name, model=model, epochs=epochs) + f"devices = {devices}\n"
    text = text.replace('metric = "box_ap"\n', 'metric = "box_ap"\ndata_root = "data"\n')
    text += "".join(f'\n[[norm]]\nuse = "{n}"\n' for n in norms)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


# -- light: no mmdet needed ------------------------------------------------------------------------


def test_a_task_whose_modules_are_missing_says_how_to_install_them() -> None:
    task = Task(name="t", make="x:y", requires=("no_such_module_here", "json"), install="make setup")
    assert task.unavailable() == "needs no_such_module_here, which is not installed; install it with `make setup`"
    assert Task(name="t", make="x:y", requires=("json",)).unavailable() is None


def test_defaults_are_the_papers_and_smoke_keeps_the_model(tmp_path: Path) -> None:
    config = DetectionConfig()
    assert (config.epochs, config.batch_size, config.optimizer.lr, config.optimizer.momentum,
            config.optimizer.weight_decay) == (12, 2, 0.02, 0.9, 1e-4)
    assert config.schedule.milestones == [8, 11] and config.schedule.warmup_iters == 500
    smoke = DetectionConfig(model="mask_rcnn", depth=101).smoke(tmp_path)
    assert (smoke.model, smoke.depth, smoke.epochs) == ("mask_rcnn", 101, 1)
    assert smoke.missing_data(tmp_path) is None


def test_missing_coco_names_the_layout(tmp_path: Path) -> None:
    key, why = DetectionConfig().missing_data(tmp_path)
    assert key == "data_dir"
    assert "annotations/instances_train2017.json" in why and "val2017/" in why and "--smoke" in why
    key, why = DetectionConfig(pretrained="r50.pth").missing_data(tmp_path)
    assert key == "pretrained" and "r50.pth" in why


def test_generated_shapes_are_coco_whose_masks_match_their_boxes(tmp_path: Path) -> None:
    pycocotools = pytest.importorskip("pycocotools.coco", reason="pycocotools comes with the detection stack")
    root = write_shapes_coco(tmp_path / "shapes", train=6, val=3, size=96)
    coco = pycocotools.COCO(str(root / "annotations" / "instances_train2017.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 6 and coco.getAnnIds()
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert abs(xs.min() - x) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5 and abs(ys.min() - y) <= 1.5
        assert mask.sum() == pytest.approx(ann["area"], rel=0.15)
    assert set(json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"][0]) >= {
        "id", "file_name", "width", "height"}


def test_check_refuses_norms_whose_needs_detection_cannot_meet(workdir: Path) -> None:
    if importlib.util.find_spec("mmdet") is None:
        pytest.skip("mmdet is not installed: check refuses the task itself (next test)")
    suite = _suite(workdir, name="refused", model="faster_rcnn", norms=["batchnorm", *REFUSED])
    assert_check_refuses(suite, REFUSED, workdir)


def test_what_a_norm_needs_may_depend_on_its_configuration() -> None:
    """The Bayesian scale's MC evaluations need class scores whatever its base; only a
    deterministic base (weight or analytic normalization) also draws input batches."""
    scale = REGISTRY.norms["bayesian_scale"]
    assert scale.needs == {"class_scores"}
    assert scale.config(base="weightnorm").needs() == {"input_batches"}
    assert scale.config(base="batchnorm").needs() == frozenset()


def test_without_mmdet_check_names_the_install_command(workdir: Path) -> None:
    if importlib.util.find_spec("mmdet") is not None:
        pytest.skip("mmdet is installed here")
    suite = _suite(workdir, name="nommdet", model="faster_rcnn", norms=["batchnorm"])
    result = run_cli("check", str(suite), cwd=workdir)
    assert result.returncode == 2 and "task.use" in result.stderr and "install_detection.sh" in result.stderr


# -- with mmdet ------------------------------------------------------------------------------------


@needs_mmdet
@pytest.mark.parametrize("name", NORMS_2D)
def test_every_harness_norm_builds_through_mmcvs_norm_cfg(name: str) -> None:
    from mmcv.cnn import build_norm_layer

    from harness_plugins.tasks.detection.models import register_norms

    register_norms(REGISTRY.norms)
    layer_name, layer = build_norm_layer(dict(type=name, requires_grad=True), 8, postfix=1)
    assert layer_name == "bn1" and isinstance(layer, torch.nn.Module)
    assert layer(torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)


@needs_mmdet
def test_a_norm_cfg_sets_the_norms_parameters_and_refuses_unknown_ones() -> None:
    from mmcv.cnn import build_norm_layer

    from harness_plugins.tasks.detection.models import register_norms

    register_norms(REGISTRY.norms)
    _, layer = build_norm_layer(dict(type="groupnorm", groups=4), 16)
    assert layer.num_groups == 4
    with pytest.raises(TypeError, match="no parameters \\['colour'\\]"):
        build_norm_layer(dict(type="batchnorm", colour=1), 16)


@needs_mmdet
@pytest.mark.parametrize("model", ["faster_rcnn", "mask_rcnn"])
def test_every_allowed_2d_norm_trains_a_step_in_the_detector(model: str, tmp_path: Path) -> None:
    """Each 2-d norm that check does not refuse trains one step inside the detector: the
    pre-flight path (backbone, FPN and heads built with it, forward, mmdet's losses, backward,
    the optimizer step)."""
    from harness.preflight import check_pair

    task = REGISTRY.tasks["detection"]
    config = DetectionConfig(model=model, depth=18, image_scale=(64, 64), batch_size=2, proposals=50,
                             rois_per_image=32)
    failures = {}
    for name in sorted(set(NORMS_2D) - set(REFUSED)):
        norm = REGISTRY.norms[name]
        result = check_pair(task, config, norm, norm.config(), data_root=tmp_path)
        if result.failure is not None or result.no_grad:
            failures[name] = (str(result.failure), result.no_grad[:3])
    assert not failures, failures


@needs_mmdet
def test_the_norm_is_everywhere_mmdet_puts_one(tmp_path: Path) -> None:
    from harness_plugins.tasks.detection.task import DetectionTask

    task = DetectionTask(DetectionConfig(model="mask_rcnn", depth=18), tmp_path, 0)
    built: list[torch.nn.Module] = []
    net = task.model(lambda c, **kw: built.append(torch.nn.GroupNorm(1, c)) or built[-1])
    places = {name.split(".")[0] + "." + name.split(".")[1] for name, m in net.named_modules() if m in built}
    assert {"backbone.bn1", "neck.lateral_convs", "neck.fpn_convs", "roi_head.bbox_head",
            "roi_head.mask_head"} <= places, places
    assert not [n for n, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@needs_mmdet
def test_pretrained_loads_a_backbone_checkpoint_from_the_data_root(tmp_path: Path) -> None:
    from harness_plugins.tasks.detection.task import DetectionTask

    norm = REGISTRY.norms["batchnorm"]
    source = DetectionTask(DetectionConfig(depth=18), tmp_path, 0).model(norm.layer())
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.backbone.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    config = DetectionConfig(depth=18, pretrained="r18.pth")
    net = DetectionTask(config, tmp_path, 0).model(norm.layer())
    net.init_weights()  # as mmengine's Runner does before training
    loaded = net.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    scratch = DetectionTask(DetectionConfig(depth=18), tmp_path, 0).model(norm.layer())
    scratch.init_weights()
    assert not torch.equal(scratch.backbone.conv1.weight, state["conv1.weight"])


@needs_mmdet
def test_coco_metric_of_perfect_and_of_shifted_detections(tmp_path: Path) -> None:
    """The task's metric path (mmdet's COCO metric on the val2017 file) gives AP 1 for detections
    equal to the ground truth, and less for boxes shifted by half their size."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    from pycocotools.coco import COCO

    write_shapes_coco(tmp_path / "coco", train=4, val=6, size=96)
    task = DetectionTask_for(tmp_path)
    coco = COCO(str(tmp_path / "coco" / "annotations" / "instances_val2017.json"))

    def detections(shift: float, keep: int = 100) -> list[DetDataSample]:
        samples = []
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))[:keep]
            boxes = torch.tensor([[x + shift * w, y, x + w + shift * w, y + h] for x, y, w, h in
                                  (a["bbox"] for a in anns)])
            sample = DetDataSample(metainfo=dict(img_id=image_id, ori_shape=(96, 96)))
            sample.pred_instances = InstanceData(bboxes=boxes, scores=torch.ones(len(anns)),
                                                 labels=torch.tensor([a["category_id"] - 1 for a in anns]))
            samples.append(sample)
        return samples

    perfect = task.reduce([task.batch_stats(detections(0.0), [])])
    shifted = task.reduce([task.batch_stats(detections(0.5), [])])
    assert perfect["box_ap"] == pytest.approx(1.0) and perfect["box_ap50"] == pytest.approx(1.0)
    assert shifted["box_ap"] < 0.2 and shifted["box_ap50"] == pytest.approx(0.0)
    assert perfect["box_apl"] == -1.0, "COCO's -1: no large object in 96-pixel images"
    none = task.reduce([task.batch_stats(detections(0.0, keep=0), [])])
    assert none == {**dict.fromkeys(none, 0.0), "box_apl": -1.0}, "no detection at all: COCO's values, not nothing"


def DetectionTask_for(root: Path):  # noqa: N802 - reads as the class it builds
    from harness_plugins.tasks.detection.task import DetectionTask

    task = DetectionTask(DetectionConfig(data_dir="coco", image_scale=(96, 96), val_fraction=0.0), root, 0)
    task.datasets()
    return task


@needs_mmdet
def test_run_without_coco_stops_with_the_layout(workdir: Path) -> None:
    result = run_cli("run", str(REPO / "suites" / "coco.toml"), cwd=workdir, env={"HARNESS_DATA": str(workdir)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "task.data_dir" in result.stderr and "annotations/instances_train2017.json" in result.stderr
    assert not (workdir / "leaderboard").exists() and not (workdir / "runs").exists(), "nothing half-written"


@needs_mmdet
@pytest.mark.parametrize(("model", "norm", "devices"), [("faster_rcnn", "batchnorm", 1), ("mask_rcnn", "groupnorm", 2)])
def test_a_trial_end_to_end_through_the_cli(workdir: Path, model: str, norm: str, devices: int) -> None:
    """Faster R-CNN in one process; Mask R-CNN on two (DDP through mmengine's launcher, gloo on
    CPU, per-device batch statistics)."""
    suite = _suite(workdir, name=f"det-{model}", model=model, norms=[norm], devices=devices)
    result = run_cli("run", str(suite), "--quiet", cwd=workdir, timeout=900)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert_every_trial_complete(workdir, f"det-{model}", 1)
    board = json.loads((workdir / "leaderboard" / f"det-{model}.json").read_text())
    (row,) = board["variants"][f"{model},r18"]
    expected = {"box_ap", "box_ap50", "box_ap75"} | ({"mask_ap", "mask_ap50"} if model == "mask_rcnn" else set())
    assert expected <= set(row["metrics"]), row["metrics"]
    assert all(0 <= row["metrics"][m][0] <= 1 for m in expected)


@needs_mmdet
@pytest.mark.slow
def test_a_detector_learns_the_shapes(workdir: Path) -> None:
    """A few epochs on the generated shapes lift box AP above zero: the data can be learnt."""
    suite = _suite(workdir, name="det-learns", model="faster_rcnn", norms=["groupnorm"], epochs=6, train=96, val=24)
    result = run_cli("run", str(suite), "--quiet", cwd=workdir, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_trial_complete(workdir, "det-learns", 1)
    board = json.loads((workdir / "leaderboard" / "det-learns.json").read_text())
    (row,) = board["variants"]["faster_rcnn,r18"]
    assert row["metrics"]["box_ap50"][0] > 0.05, row["metrics"]
