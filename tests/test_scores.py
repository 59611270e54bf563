"""--scores (scores= in Python): a detector's or a segmenter's output explained by the seed (docs/design.md section 6).

The seed is the initial relevance at the named output and, for the gradient methods, the weights of the explained
sum of scores; with top_k it gains a K axis (several explained targets per image in one run). Relevance is held to
the independent reference on a segmenter built from modules it knows; the gradient on every tiny detector and
segmenter of tests/detectors.py, from both exporters, to plain autograd of the seed-weighted outputs.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import onnx_rcam
import reference
import zoo
from conftest import assert_close, run_model
from test_detectors import SHAPES, model

EXPORTERS = ["torchscript", "dynamo"]
# Two layers per model by module path: a backbone stage and a later one (the neck, the ASPP, the decoder).
LAYERS = {"yolov5": ["backbone.stage3", "neck.merge3"], "yolov8": ["backbone.stage2", "neck.merge4"],
          "fcn": ["backbone.layer2", "backbone.layer4"], "deeplabv3": ["backbone.layer4", "classifier.0"],
          "deeplabv3_upsampled": ["backbone.layer3", "classifier.0"], "unet": ["down1", "conv2"]}


class TinySegmenter(nn.Module):
    """Conv - ReLU - strided Conv - ReLU - 1x1 classifier - bilinear upsampling: [N, 3, 16, 16] -> [N, 4, 16, 16],
    every op a module the reference has a rule for."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(12, classes, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        return self.upsample(self.classifier(self.features(x)))


def exported(net: nn.Module, name: str, exporter: str, size: int, export_dir):
    return zoo.export(net, export_dir / f"scores-{name}-{exporter}.onnx", exporter, input_shape=(1, 3, size, size))


def class_region_seed(logits: np.ndarray, chosen: int) -> np.ndarray:
    """--task segment's default seed: the chosen class's channel, 1 where it is the predicted class, else 0."""
    seed = np.zeros_like(logits)
    seed[:, chosen] = logits.argmax(1) == chosen
    return seed


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_segmenter_relevance_from_a_seed_matches_the_reference(exporter, export_dir):
    """A class region as the seed of [N, C, H, W] logits: relevance, raw map and map at two depths as the reference
    computes them from the same initial relevance; no rcam/class, no rcam/target."""
    net = zoo.randomize(TinySegmenter(), seed=31)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(32)).numpy()
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    seed = class_region_seed(logits, chosen=2)
    assert 0 < seed.sum() < seed[:, 2].size  # the class is predicted somewhere, not everywhere
    layers = ["features.1", "features.3"]
    augmented = onnx_rcam.augment(exported(net, "segmenter", exporter, 16, export_dir), layers=layers,
                                  scores="logits")
    assert {i.name for i in augmented.graph.input} >= {"rcam/seed"}
    assert "rcam/seed" not in {i.name for i in augmented.graph.initializer}  # no default: it must be fed
    assert not {"rcam/target", "rcam/class"} & {*(i.name for i in augmented.graph.input),
                                                 *(o.name for o in augmented.graph.output)}
    out = run_model(augmented, {"input": x, "rcam/seed": seed})
    ref = reference.reference(net, x, layers, seed=seed)
    for layer in layers:
        assert_close(out[f"rcam/{layer}/relevance"], ref.relevance[layer], f"{layer} relevance")
        assert_close(out[f"rcam/{layer}/raw"], ref.raw[layer], f"{layer} raw")
        assert_close(out[f"rcam/{layer}/map"], ref.maps[layer], f"{layer} map")


class SoftmaxSegmenter(TinySegmenter):
    """The same, ending in a softmax over the classes, as deployed segmenters often do."""

    def forward(self, x):
        return torch.softmax(super().forward(x), 1)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_scores_after_a_final_softmax_are_explained_at_the_logits(exporter, export_dir):
    """LRP holds a Softmax inside the network constant, so a segmenter's probabilities are explained where class
    scores are: at the logits. The maps equal those of the same network without the softmax, for the same seed."""
    net = zoo.randomize(TinySegmenter(), seed=33)
    normalised = SoftmaxSegmenter()
    normalised.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(34)).numpy()
    seed = np.random.default_rng(35).random((2, 4, 16, 16)).astype(np.float32)
    maps = []
    for name, model_ in (("plain", net), ("softmax", normalised.eval())):
        augmented = onnx_rcam.augment(exported(model_, f"segmenter-{name}", exporter, 16, export_dir),
                                      layers=["features.3"], scores="logits")
        maps.append(run_model(augmented, {"input": x, "rcam/seed": seed})["rcam/features.3/relevance"])
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-7)


@functools.cache
def seeds(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Two images and two random non-negative seeds per image, shaped like the model's output."""
    size, shape = SHAPES[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(41)).numpy()
    seed = np.random.default_rng(42).random((2, 2, *shape)).astype(np.float32)
    return x, seed


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_gradient_from_a_seed_is_autograd(name, exporter, export_dir):
    """YOLOv5 [N, A, 5 + C], YOLOv8 [N, 4 + C, A] (DFL, dist2bbox), FCN, DeepLabV3 and U-Net [N, C, H, W]: with
    two seeds per image (top_k=2), each one's gradient and Grad-CAM map at two depths is autograd's of the
    seed-weighted sum of the outputs."""
    net = model(name)
    size, _ = SHAPES[name]
    layers = LAYERS[name]
    x, seed = seeds(name)
    augmented = onnx_rcam.augment(exported(net, name, exporter, size, export_dir), layers=layers, scores="logits",
                                  methods=["gradcam"], top_k=2)
    out = run_model(augmented, {"input": x, "rcam/seed": seed})
    for k in range(2):
        activations, grads = reference.gradients(net, x, layers, seed=seed[:, k])
        cams = {layer: reference.gradient_cams(activations[layer], grads[layer], (size, size))["gradcam"]
                for layer in layers}
        for layer in layers:
            assert_close(out[f"gradcam/{layer}/gradient"][:, k], grads[layer].numpy(), f"{layer} gradient {k}")
            assert_close(out[f"gradcam/{layer}/map"][:, k], cams[layer][1].numpy(), f"{layer} map {k}")


@pytest.mark.parametrize("name", ["yolov5", "yolov8"])
def test_detection_relevance_follows_the_seed(name, export_dir):
    """rcam on a detector, seeded at one anchor's class score: finite maps in [0, 1]; relevance is linear in the
    seed (two anchors seeded at once give the sum of their relevance), and two anchors' maps differ."""
    net = model(name)
    size, shape = SHAPES[name]
    x, _ = seeds(name)
    augmented = onnx_rcam.augment(exported(net, name, "dynamo", size, export_dir), layers=LAYERS[name][:1],
                                  scores="logits", top_k=3)
    seed = np.zeros((2, 3, *shape), dtype=np.float32)
    # A class score at two anchors: YOLOv5's rows are anchors (columns 5.. the classes), YOLOv8's columns.
    first, second = ((5, 6), (200, 7)) if name == "yolov5" else ((5, 3), (5, 80))
    seed[(slice(None), 0, *first)] = 1.0
    seed[(slice(None), 1, *second)] = 1.0
    seed[:, 2] = seed[:, 0] + seed[:, 1]
    out = run_model(augmented, {"input": x, "rcam/seed": seed})
    relevance = out[f"rcam/{LAYERS[name][0]}/relevance"]
    maps = out[f"rcam/{LAYERS[name][0]}/map"]
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(relevance[:, 2], relevance[:, 0] + relevance[:, 1], rtol=1e-4,
                               atol=1e-6 * np.abs(relevance).max())
    assert np.abs(maps[:, 0] - maps[:, 1]).max() > 0.05


def test_classifier_named_by_scores_is_the_default(export_dir):
    """--scores naming a classifier's logits changes nothing: the same file, class scores explained per class."""
    default = onnx_rcam.augment(onnx_rcam.default_model_path())
    named = onnx_rcam.augment(onnx_rcam.default_model_path(), scores="logits")
    assert named.SerializeToString() == default.SerializeToString()


def test_scores_errors(export_dir):
    """An unknown output is named with the outputs there are; a detector without --scores is told about it."""
    size, _ = SHAPES["yolov5"]
    path = exported(model("yolov5"), "yolov5", "dynamo", size, export_dir)
    with pytest.raises(onnx_rcam.ModelError, match=r"no output 'boxes'; its outputs: 'logits'"):
        onnx_rcam.augment(path, scores="boxes")
    with pytest.raises(onnx_rcam.ModelError, match=r"name it with --scores"):
        onnx_rcam.augment(path)
    onnx.checker.check_model(onnx_rcam.augment(path, scores="logits"), full_check=True)


def test_auto_for_scores_does_not_depend_on_node_names(export_dir):
    """Some converters leave every node unnamed (CenterFace's export): auto is still the last layer with a learned
    layer between it and the scores, not the class map right before the upsampling."""
    from onnx_rcam.augment import build
    path = exported(zoo.randomize(TinySegmenter(), seed=36), "segmenter-names", "torchscript", 16, export_dir)
    named = build(path, scores="logits").targets[0].tensor
    model = onnx.load(path)
    for node in model.graph.node:
        node.name = ""
    unnamed = build(model, scores="logits").targets[0].tensor
    assert unnamed == named and "classifier" not in named
