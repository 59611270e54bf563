"""tests/detectors.py: the tiny detectors and segmenters export (both exporters) to the layouts users deploy and
run in onnxruntime as in torch."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

import detectors
import zoo
from onnx_rcam.detection import xywh_to_xyxy
from conftest import run_model

EXPORTERS = ["torchscript", "dynamo"]
C = detectors.CLASSES
A = sum((detectors.SIZE // s) ** 2 for s in detectors.STRIDES)  # grid cells over the three scales: 84
S = detectors.SEGMENTER_SIZE
# name -> (input side, output shape of one image)
SHAPES = {"yolov5": (detectors.SIZE, (3 * A, 5 + C)), "yolov8": (detectors.SIZE, (4 + C, A)),
          "fcn": (S, (C, S, S)), "deeplabv3": (S, (C, S // 8, S // 8)), "deeplabv3_upsampled": (S, (C, S, S)),
          "unet": (S, (C, S, S))}


@functools.cache
def model(name: str):
    return detectors.randomize(detectors.MODELS[name](), seed=sum(map(ord, name)))


def ops(path) -> list[onnx.NodeProto]:
    return list(onnx.load(path).graph.node)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", SHAPES)
def test_export_runs_as_torch(name, exporter, export_dir):
    size, shape = SHAPES[name]
    net = model(name)
    path = zoo.export(net, export_dir / f"detectors-{name}-{exporter}.onnx", exporter, input_shape=(1, 3, size, size))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x).numpy()
    out = run_model(str(path), {"input": x.numpy()})["logits"]
    assert expected.shape == out.shape == (2, *shape)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)

    nodes = ops(path)
    kinds = {n.op_type for n in nodes}
    if name == "yolov5":
        perms = [list(a.ints) for n in nodes if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
        assert perms.count([0, 1, 3, 4, 2]) == 3 and {"Sigmoid", "Concat", "Resize"} <= kinds
        assert 0 <= out[..., 4:].min() and out[..., 4:].max() <= 1  # objectness and class probabilities
    elif name == "yolov8":
        dfl = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.dims[:2] == [1, 8]]
        assert {"Softmax", "Sigmoid", "Conv"} <= kinds
        assert 0 <= out[:, 4:].min() and out[:, 4:].max() <= 1 and (out[:, 2:4] > 0).all()  # probabilities, w, h
        if exporter == "torchscript":  # DFL's 1x1 conv with weights 0..7 (dynamo may fold it into other constants)
            assert any(np.array_equal(w.reshape(-1), np.arange(8)) for w in dfl)
    elif name == "unet":
        assert sum(n.op_type == "ConvTranspose" for n in nodes) == 2 and "MaxPool" in kinds
    else:
        dilations = {tuple(a.ints) for n in nodes for a in n.attribute if a.name == "dilations"}
        assert (2, 2) in dilations and ((4, 4) in dilations) == name.startswith("deeplab")
        assert "Resize" in kinds  # bilinear to the input (FCN, DeepLabV3 upsampled), or ASPP's image pooling


def test_v5_rows_are_anchor_cells_in_order():
    """Row a * h * w + y * w + x of a scale is anchor a at cell (x, y): its centre lies within [x - 0.5, x + 1.5]
    * stride (xy = (2 sigmoid - 0.5 + x) * stride), and its wh within 4 times the anchor."""
    with torch.no_grad():
        out = model("yolov5")(torch.randn(1, 3, detectors.SIZE, detectors.SIZE)).numpy()[0]
    start = 0
    for stride, anchors in zip(detectors.STRIDES, detectors.V5_ANCHORS):
        n = detectors.SIZE // stride
        rows = out[start:start + 3 * n * n].reshape(3, n, n, 5 + C)
        cells = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="xy"), -1)  # [y, x] -> (x, y)
        assert np.all(rows[..., :2] >= (cells - 0.5) * stride) and np.all(rows[..., :2] <= (cells + 1.5) * stride)
        assert np.all(rows[..., 2:4] <= 4 * np.array(anchors).reshape(3, 1, 1, 2) + 1e-5)
        start += 3 * n * n
    assert start == len(out)


def test_v8_columns_are_boxes_around_anchor_points():
    """Column i of the 8x8 scale is cell (i % 8, i // 8): its box holds the cell's centre (DFL distances >= 0) and
    reaches at most reg_max - 1 cells to each side."""
    with torch.no_grad():
        out = model("yolov8")(torch.randn(1, 3, detectors.SIZE, detectors.SIZE)).numpy()[0]
    boxes = xywh_to_xyxy(out[:4].T)
    points, strides = (t.numpy() for t in detectors.make_anchors())
    centres = points * strides
    assert np.all(boxes[:, :2] <= centres + 1e-4) and np.all(boxes[:, 2:] >= centres - 1e-4)
    assert np.all(boxes[:, 2:] - centres <= 7 * strides + 1e-4)
    assert np.allclose(centres[:3], [[4, 4], [12, 4], [20, 4]]) and np.allclose(centres[-1], [48, 48])
