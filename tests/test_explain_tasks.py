"""Explainer(task=...) and `explain --task` / `evaluate --task` on detectors and segmenters (issue 14).

The seeds are held to autograd: each explained detection's gradient is the gradient of its anchor's class score,
and each explained class region's is that of the class's logits summed over the region.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import reference
import zoo
from onnx_rcam.console.cli import run
from conftest import assert_close, run_model
from onnx_rcam.detection import detect
from onnx_rcam.explainer import Explainer
from onnx_rcam.segmentation import class_regions, segment_classes, segment_seeds
from test_detectors import SHAPES, model


@pytest.fixture(scope="module")
def exported(export_dir):
    def export(name: str):
        return zoo.export(model(name), export_dir / f"tasks-{name}.onnx", "dynamo",
                          input_shape=(1, 3, SHAPES[name][0], SHAPES[name][0]))
    return export


def batch(name: str, count: int = 2) -> np.ndarray:
    size = SHAPES[name][0]
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(5)).numpy()


@pytest.mark.parametrize("name", ["yolov5", "yolov8"])
def test_each_detection_is_explained_by_its_class_score(name, exported):
    """The detections are the decoded, suppressed outputs of the plain model; detection k's gradient at a neck
    layer is autograd's of its anchor's class score; images with fewer detections get class -1 and zero maps."""
    path, x = exported(name), batch(name)
    explainer = Explainer(path, layers=["neck.merge3"], task="detect", method="gradcam", conf=0.3, detections=3,
                          preprocessing="yolo")
    explanation = explainer(x, extras=True)
    layout = explainer.layout
    expected = detect(run_model(str(path), {"input": x})["logits"], layout, 0.3, 0.45, 3)
    assert explainer.top_k == 3 and explanation.maps["neck.merge3"].shape == (2, 3, *x.shape[2:])
    for found, wanted in zip(explanation.detections, expected):
        np.testing.assert_array_equal(found.anchors, wanted.anchors)
        np.testing.assert_array_equal(found.classes, wanted.classes)
    assert sum(len(d) for d in expected) > 0
    shape = SHAPES[name][1]
    for k in range(3):
        seed = np.zeros((2, *shape), np.float32)
        for n, found in enumerate(explanation.detections):
            if k < len(found):
                index = (found.anchors[k], (5 if layout == "yolov5" else 4) + found.classes[k])
                seed[(n, *(index if layout == "yolov5" else index[::-1]))] = 1
            else:
                assert explanation.classes[n, k] == -1 and not explanation.maps["neck.merge3"][n, k].any()
        _, grads = reference.gradients(model(name), x, ["neck.merge3"], seed=seed)
        assert_close(explanation.relevance["neck.merge3"][:, k], grads["neck.merge3"].numpy(), f"gradient {k}")


def test_each_class_region_is_explained_by_its_logits(exported):
    """U-Net, the two most frequent predicted classes per image: each one's gradient is autograd's of its logits
    summed over the pixels predicted as it."""
    path, x = exported("unet"), batch("unet", 3)
    explainer = Explainer(path, layers=["conv2"], task="segment", method="gradcam", top_k=2, preprocessing="unit")
    explanation = explainer(x, extras=True)
    logits = run_model(str(path), {"input": x})["logits"]
    classes = segment_classes(logits, 2)
    np.testing.assert_array_equal(explanation.classes, classes)
    seeds = segment_seeds(logits, classes, class_regions(logits, classes))
    for k in range(2):
        _, grads = reference.gradients(model("unet"), x, ["conv2"], seed=seeds[:, k])
        assert_close(explanation.relevance["conv2"][:, k], grads["conv2"].numpy(), f"gradient {k}")


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos of different shapes, so that the letterbox pads and the centre crop cuts."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for name, size in (("wide", (96, 48)), ("tall", (40, 80)), ("square", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def test_explain_detect_writes_boxes_maps_and_the_pointing_game(capsys, tmp_path, photos, exported):
    code, out, err = cli(capsys, "explain", str(exported("yolov8")), str(photos), "--task", "detect",
                         "--preprocess", "yolo", "--conf", "0.3", "--detections", "2", "-o", str(tmp_path / "out"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task"] == "detect" and summary["explained"] == 3
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert rows and {"pointing auto", "x1", "score", "label"} <= set(rows[0])
    first = summary["results"][0]
    stem = tmp_path / "out" / first["image"].rsplit("/", 1)[-1].removesuffix(".png")
    for k, found in enumerate(first["detections"]):
        assert (stem.parent / f"{stem.name}.auto.det{k + 1}.png").is_file()
        assert isinstance(found["pointing"]["auto"], bool) and len(found["box"]) == 4
    assert (stem.parent / f"{stem.name}.detections.png").is_file() and (stem.parent / f"{stem.name}.npz").is_file()


def test_explain_segment_over_a_box(capsys, tmp_path, photos, exported):
    code, out, err = cli(capsys, "explain", str(exported("deeplabv3")), str(photos), "--task", "segment",
                         "--preprocess", "unit", "--box", "10,10,40,40", "-o", str(tmp_path / "out"))
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task"] == "segment" and all(0 < r["region_share"][0] < 1 for r in summary["results"])
    assert (tmp_path / "out" / "square.auto.png").is_file()


@pytest.mark.parametrize("args, message", [(["--box", "0,0,5,5"], "--box and --mask are for --task segment"),
                                           (["--task", "segment", "--box", "5,5,1,1"], "must exceed"),
                                           (["--task", "detect", "--method", "scorecam"], "classifiers only")])
def test_explain_task_options_are_checked(capsys, tmp_path, photos, exported, args, message):
    code, _, err = cli(capsys, "explain", str(exported("yolov5")), str(photos), *args, "-o", str(tmp_path / "o"))
    assert code == 2 and message in err


def test_evaluate_detect_scores_the_pointing_game(capsys, tmp_path, photos, exported):
    code, out, err = cli(capsys, "evaluate", str(exported("yolov5")), str(photos), "--task", "detect",
                         "--preprocess", "yolo", "--conf", "0.3", "--method", "rcam", "--method", "gradcam",
                         "-o", str(tmp_path / "ev"))
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "ev" / "results.csv").open()))
    assert [r["method"] for r in rows] == ["rcam", "gradcam"] and int(rows[0]["detections"]) > 0
    assert 0 <= float(rows[0]["pointing_game"]) <= 100 and rows[0]["deletion_auc"] == "nan"
    # the interval draws images, each with all its detections
    low, high = float(rows[0]["pointing_game_low"]), float(rows[0]["pointing_game_high"])
    assert low <= float(rows[0]["pointing_game"]) <= high


def test_a_segmenter_with_channels_last_scores(export_dir):
    """[N, h, w, C] scores (TensorFlow segmenters, MTCNN's P-Net) are read with the classes last: the same classes,
    regions and gradients as the [N, C, h, w] model they are the transpose of."""
    from torch import nn
    from test_scores import TinySegmenter

    class ChannelsLast(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).permute(0, 2, 3, 1)

    net = zoo.randomize(TinySegmenter(), seed=61)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(62)).numpy()
    found = []
    for name, model_ in (("first", net), ("last", ChannelsLast(net).eval())):
        path = zoo.export(model_, export_dir / f"tasks-segmenter-{name}.onnx", "dynamo", input_shape=(1, 3, 16, 16))
        explainer = Explainer(path, layers=["features.3" if name == "first" else "inner.features.3"],
                              task="segment", method="gradcam", top_k=2, preprocessing="unit")
        assert explainer.channels_last == (name == "last")
        found.append(explainer(x, extras=True))
    np.testing.assert_array_equal(found[1].classes, found[0].classes)
    np.testing.assert_array_equal(found[1].regions, found[0].regions)
    np.testing.assert_allclose(found[1].relevance["inner.features.3"], found[0].relevance["features.3"],
                               rtol=1e-5, atol=1e-7)


def test_the_default_method_is_lrp_unless_the_model_holds_other_maps(exported, tmp_path):
    """lrp for every task (reports/faithfulness.md; README, Detectors and segmenters); an augmented model without lrp
    maps falls back to rcam."""
    import onnx
    import onnx_rcam
    path = exported("yolov5")
    assert Explainer(path, task="detect", preprocessing="yolo").name == "lrp"
    augmented = tmp_path / "rcam-only.onnx"
    onnx.save(onnx_rcam.augment(path, scores="logits", top_k=5), augmented)
    assert Explainer(augmented, task="detect", preprocessing="yolo").name == "rcam"
    assert Explainer(onnx_rcam.default_model_path()).name == "lrp"


def test_class_names_come_from_the_models_metadata(exported):
    """ultralytics writes `names` into the exported model; the labels are read from there."""
    import onnx
    from onnx_rcam.explain import model_labels, read_labels
    model = onnx.load(exported("yolov8"))
    model.metadata_props.add(key="names", value="{0: 'person', 1: 'bicycle', 2: 'car'}")
    assert model_labels(model) == ["person", "bicycle", "car"]
    assert read_labels(None, 3, "detect", model) == ["person", "bicycle", "car"]
    assert read_labels(None, 4, "detect", model) == ["0", "1", "2", "3"]  # too few names: numbers
