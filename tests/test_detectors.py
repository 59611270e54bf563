"""tests/detectors.py: the tiny detectors and segmenters export (both exporters) to the layouts users deploy and
run in onnxruntime as in torch; the numpy letterbox, decoders and NMS give known answers on hand-made arrays."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

import detectors
import zoo
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
    boxes = detectors.xywh_to_xyxy(out[:4].T)
    points, strides = (t.numpy() for t in detectors.make_anchors())
    centres = points * strides
    assert np.all(boxes[:, :2] <= centres + 1e-4) and np.all(boxes[:, 2:] >= centres - 1e-4)
    assert np.all(boxes[:, 2:] - centres <= 7 * strides + 1e-4)
    assert np.allclose(centres[:3], [[4, 4], [12, 4], [20, 4]]) and np.allclose(centres[-1], [48, 48])


# -- numpy helpers -------------------------------------------------------------------------------------------

def test_letterbox_pads_evenly_with_gray():
    image = np.full((40, 80, 3), 200, np.uint8)
    padded, scale, pad = detectors.letterbox(image, 64)
    assert padded.dtype == np.float32 and padded.shape == (64, 64, 3)
    assert scale == 0.8 and pad == (0, 16)
    assert np.all(padded[:16] == 114) and np.all(padded[48:] == 114) and np.all(padded[16:48] == 200)


def test_letterbox_odd_padding_goes_to_the_bottom():
    image = np.arange(3 * 8 * 3, dtype=np.uint8).reshape(3, 8, 3)
    padded, scale, pad = detectors.letterbox(image, 8)
    assert scale == 1.0 and pad == (0, 2) and padded.shape == (8, 8, 3)
    assert np.array_equal(padded[2:5], image) and np.all(padded[:2] == 114) and np.all(padded[5:] == 114)


def test_letterbox_resizes_bilinearly_with_half_pixel_centres():
    image = np.array([[[0], [100]]], np.uint8)  # 1 x 2, one channel
    padded, scale, pad = detectors.letterbox(image, (4, 4))
    assert scale == 2.0 and pad == (0, 1)
    np.testing.assert_array_equal(padded[..., 0], [[114] * 4, [0, 25, 75, 100], [0, 25, 75, 100], [114] * 4])


def test_letterbox_box_maps_back():
    """A box in the padded image maps back to the original by (x - pad_x) / r, (y - pad_y) / r."""
    _, r, (pad_x, pad_y) = detectors.letterbox(np.zeros((30, 60, 3), np.uint8), 64)
    box = np.array([10.0, 20.0, 40.0, 44.0])  # in the padded image
    original = (box - [pad_x, pad_y, pad_x, pad_y]) / r
    assert (r, pad_x, pad_y) == (64 / 60, 0, 16)
    np.testing.assert_allclose(original, [9.375, 3.75, 37.5, 26.25])


V5_OUTPUT = np.array([[[10, 10, 4, 4, 0.9, 0.1, 0.8, 0.1],     # 0.9 * 0.8 = 0.72, class 1
                       [50, 50, 8, 8, 0.2, 1.0, 0.0, 0.0],     # 0.2: below conf
                       [30, 20, 10, 6, 0.5, 0.2, 0.3, 0.9],    # 0.45, class 2
                       [5, 5, 2, 2, 0.99, 0.1, 0.1, 0.1]]],    # 0.099: objectness alone is not the score
                     np.float32)


def test_decode_v5():
    boxes, scores, classes, anchors = detectors.decode_v5(V5_OUTPUT, conf=0.25)
    np.testing.assert_allclose(boxes, [[8, 8, 12, 12], [25, 17, 35, 23]])
    np.testing.assert_allclose(scores, [0.72, 0.45], rtol=1e-6)
    np.testing.assert_array_equal(classes, [1, 2])
    np.testing.assert_array_equal(anchors, [0, 2])
    assert len(detectors.decode_v5(V5_OUTPUT[0], conf=0.8)[0]) == 0


def test_decode_v8():
    output = np.array([[10, 5, 20], [10, 5, 30], [4, 2, 8], [4, 2, 4],      # x, y, w, h per column
                       [0.1, 0.1, 0.6], [0.9, 0.1, 0.1], [0.2, 0.2, 0.1]],  # class probabilities
                      np.float32)[None]
    boxes, scores, classes, anchors = detectors.decode_v8(output, conf=0.25)
    np.testing.assert_allclose(boxes, [[8, 8, 12, 12], [16, 28, 24, 32]])
    np.testing.assert_allclose(scores, [0.9, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(classes, [1, 0])
    np.testing.assert_array_equal(anchors, [0, 2])


def test_decoders_take_one_image():
    with pytest.raises(ValueError, match="one image at a time"):
        detectors.decode_v5(np.repeat(V5_OUTPUT, 2, axis=0), conf=0.25)
    with pytest.raises(ValueError, match="expected a 2-D output"):
        detectors.decode_v8(np.zeros(5), conf=0.25)


NMS_BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32)
NMS_SCORES = np.array([0.9, 0.8, 0.7, 0.95], np.float32)


@pytest.mark.parametrize("iou, classes, expected", [
    (0.5, None, [3, 0, 2]),           # IoU(0, 1) = 81 / 119: 1 dropped; IoU(3, 0) = 0.5 is not above 0.5
    (0.45, None, [3, 1, 2]),          # now 3 drops 0, and 1 (IoU 36 / 114 with 3) stays
    (0.5, [0, 1, 0, 0], [3, 0, 1, 2]),  # 1 is another class than 0: never suppressed by it
    (0.9, None, [3, 0, 1, 2]),
])
def test_nms(iou, classes, expected):
    kept = detectors.nms(NMS_BOXES, NMS_SCORES, iou, None if classes is None else np.array(classes))
    np.testing.assert_array_equal(kept, expected)


def test_nms_of_nothing():
    assert detectors.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
