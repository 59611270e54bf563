"""onnx_rcam/detection.py: YOLO outputs decoded, suppressed and turned into seeds, on hand-made arrays with known
answers."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_rcam import RcamError
from onnx_rcam.detection import Detections, decode, detect, detection_seeds, nms, output_layout

V5_OUTPUT = np.array([[10, 10, 4, 4, 0.9, 0.1, 0.8, 0.1],     # 0.9 * 0.8 = 0.72, class 1
                      [50, 50, 8, 8, 0.2, 1.0, 0.0, 0.0],     # 0.2: below conf
                      [30, 20, 10, 6, 0.5, 0.2, 0.3, 0.9],    # 0.45, class 2
                      [5, 5, 2, 2, 0.99, 0.1, 0.1, 0.1]],     # 0.099: objectness alone is not the score
                     np.float32)
V8_OUTPUT = np.array([[10, 5, 20], [10, 5, 30], [4, 2, 8], [4, 2, 4],      # x, y, w, h per column
                      [0.1, 0.1, 0.6], [0.9, 0.1, 0.1], [0.2, 0.2, 0.1]],  # class probabilities
                     np.float32)


@pytest.mark.parametrize("output, layout, boxes, scores, classes", [
    (V5_OUTPUT, "yolov5", [[8, 8, 12, 12], [25, 17, 35, 23]], [0.72, 0.45], [1, 2]),
    (V8_OUTPUT, "yolov8", [[8, 8, 12, 12], [16, 28, 24, 32]], [0.9, 0.6], [1, 0]),
])
def test_decode(output, layout, boxes, scores, classes):
    found = decode(output, layout, conf=0.25)
    np.testing.assert_allclose(found.boxes, boxes)
    np.testing.assert_allclose(found.scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(found.classes, classes)
    np.testing.assert_array_equal(found.anchors, [0, 2])
    assert len(decode(output, layout, conf=0.95)) == 0  # no score above it


@pytest.mark.parametrize("shape, layout", [((1, 84, 8400), "yolov8"), ((1, 25200, 85), "yolov5"),
                                           ((2, 7, 84), "yolov8"), ((2, 252, 8), "yolov5")])
def test_layout_from_the_shape(shape, layout):
    assert output_layout(shape) == layout


@pytest.mark.parametrize("shape, message", [((1, 84), "must be"), ((1, 4, 100), "too few values"),
                                            ((1, 100, 5), "too few values")])
def test_impossible_layouts_are_refused(shape, message):
    with pytest.raises(RcamError, match=message):
        output_layout(shape)
    with pytest.raises(RcamError, match="unknown detection layout"):
        output_layout((1, 84, 8400), "yolov7")


NMS_BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], np.float32)
NMS_SCORES = np.array([0.9, 0.8, 0.7, 0.95], np.float32)


@pytest.mark.parametrize("iou, classes, expected", [
    (0.5, None, [3, 0, 2]),           # IoU(0, 1) = 81 / 119: 1 dropped; IoU(3, 0) = 0.5 is not above 0.5
    (0.45, None, [3, 1, 2]),          # now 3 drops 0, and 1 (IoU 36 / 114 with 3) stays
    (0.5, [0, 1, 0, 0], [3, 0, 1, 2]),  # 1 is another class than 0: never suppressed by it
    (0.9, None, [3, 0, 1, 2]),
])
def test_nms(iou, classes, expected):
    kept = nms(NMS_BOXES, NMS_SCORES, iou, None if classes is None else np.array(classes))
    np.testing.assert_array_equal(kept, expected)


def test_nms_of_nothing():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_detect_keeps_the_best_after_nms():
    """Two images: the second's near-duplicate of its best box is suppressed; the limit cuts the rest."""
    second = V5_OUTPUT.copy()
    second[3] = [10.5, 10, 4, 4, 0.8, 0.1, 0.8, 0.1]  # 0.64, class 1, IoU 0.78 with row 0
    found = detect(np.stack([V5_OUTPUT, second]), "yolov5", conf=0.25, iou=0.45, limit=1)
    assert [len(f) for f in found] == [1, 1]
    np.testing.assert_array_equal([f.anchors[0] for f in found], [0, 0])
    found = detect(np.stack([V5_OUTPUT, second]), "yolov5", conf=0.25, iou=0.45, limit=5)
    np.testing.assert_array_equal(found[1].anchors, [0, 2])


@pytest.mark.parametrize("layout", ["yolov5", "yolov8"])
def test_seeds_are_one_at_each_detections_class_score(layout):
    output = V5_OUTPUT if layout == "yolov5" else V8_OUTPUT
    found = [decode(output, layout, 0.25), Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int),
                                                      np.zeros(0, int))]
    seeds = detection_seeds(found, output.shape, layout, limit=3)
    assert seeds.shape == (2, 3, *output.shape) and seeds.sum() == 2
    if layout == "yolov5":
        assert seeds[0, 0, 0, 5 + 1] == 1 and seeds[0, 1, 2, 5 + 2] == 1
    else:
        assert seeds[0, 0, 4 + 1, 0] == 1 and seeds[0, 1, 4 + 0, 2] == 1
    assert not seeds[0, 2].any() and not seeds[1].any()  # fewer detections than the limit: zero seeds


def test_outputs_without_decoded_boxes_are_refused():
    """A YOLOX or PicoDet output (raw offsets, or scores only) read as a YOLO layout has "boxes" of a pixel or
    less: refused with what to do, instead of explaining nonsense boxes."""
    raw = np.random.default_rng(0).random((1, 50, 8)).astype(np.float32)  # values in [0, 1] everywhere
    with pytest.raises(RcamError, match="under 2.0 px.*--scores and rcam/seed"):
        detect(raw, "yolov5", conf=0.01)
