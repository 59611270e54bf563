"""Detections of a YOLO-style detector's output, and the seeds that explain them (docs/design.md section 6).

ultralytics exports two layouts, both decoded in the graph to boxes in input pixels:
- YOLOv5: [N, A, 5 + C], a row per anchor: x, y, w, h, objectness, class probabilities;
- YOLOv8 / YOLO11: [N, 4 + C, A], a column per anchor: x, y, w, h, class probabilities.
A detection's score is its best class probability (times the objectness for YOLOv5); those above `conf` go through
class-aware greedy non-maximum suppression, and the best `limit` are kept. The seed that explains one detection is
1 at its anchor's class score and 0 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RcamError

LAYOUTS = ("auto", "yolov5", "yolov8")
MIN_BOX_SIDE = 2.0  # px: decoded boxes are this large at least; a raw output's "boxes" are offsets or scores


@dataclass
class Detections:
    """One image's detections, best first: boxes (x1, y1, x2, y2) in model-input pixels."""
    boxes: np.ndarray    # [D, 4] float
    scores: np.ndarray   # [D]
    classes: np.ndarray  # [D] int
    anchors: np.ndarray  # [D] int: the row (YOLOv5) or column (YOLOv8) of the output

    def __len__(self) -> int:
        return len(self.scores)


def output_layout(shape, layout: str = "auto") -> str:
    """yolov5 or yolov8 for an output of shape [N, a, b]. auto: [N, 4 + C, A] (YOLOv8) where the middle axis is
    the shorter, as it is for every ultralytics export (A is in the thousands, C in the tens)."""
    if layout not in LAYOUTS:
        raise RcamError(f"unknown detection layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise RcamError(f"a detector's output must be [N, A, 5 + C] (YOLOv5) or [N, 4 + C, A] (YOLOv8); got "
                        f"shape {list(shape)}")
    if layout == "auto":
        layout = "yolov8" if shape[1] < shape[2] else "yolov5"
    fields = shape[2] if layout == "yolov5" else shape[1]
    if fields < (6 if layout == "yolov5" else 5):
        raise RcamError(f"output shape {list(shape)} has too few values per anchor for {layout}")
    return layout


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    xy, wh = boxes[..., :2], boxes[..., 2:4]
    return np.concatenate([xy - wh / 2, xy + wh / 2], -1)


def decode(output: np.ndarray, layout: str, conf: float) -> Detections:
    """One image's output ([A, 5 + C] or [4 + C, A]): every anchor whose score exceeds conf, unsorted."""
    if layout == "yolov5":
        boxes, class_scores = output[:, :4], output[:, 5:] * output[:, 4:5]
    else:
        boxes, class_scores = output[:4].T, output[4:].T
    classes = class_scores.argmax(1)
    scores = class_scores[np.arange(len(classes)), classes]
    keep = np.flatnonzero(scores > conf)
    return Detections(xywh_to_xyxy(boxes[keep]).astype(np.float64), scores[keep], classes[keep], keep)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes`."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first; a box is dropped when its IoU
    with a kept one exceeds `iou`. With `classes`, boxes of different classes never suppress each other."""
    boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(best)
        overlap = box_iou(boxes[best], boxes[rest]) > iou
        if classes is not None:
            overlap &= np.asarray(classes)[rest] == classes[best]
        order = rest[~overlap]
    return np.array(kept, dtype=np.int64)


def detect(outputs: np.ndarray, layout: str, conf: float = 0.25, iou: float = 0.45,
           limit: int = 5) -> list[Detections]:
    """Per image of a batch of outputs: decoded, suppressed and cut to the best `limit` detections."""
    found = []
    for output in outputs:
        sizes = output[:, 2:4] if layout == "yolov5" else output[2:4].T  # every anchor's, whatever its score
        if np.median(sizes) < MIN_BOX_SIDE:
            raise RcamError(
                f"the boxes read as {layout} are under {MIN_BOX_SIDE} px (median {np.median(sizes):.2g} px): this "
                f"output does not hold boxes decoded in pixels, as ultralytics' exports do (a YOLOX or PicoDet "
                f"output is raw, or holds scores only). Decode it yourself and explain it with --scores and "
                f"rcam/seed (README, Detectors and segmenters).")
        candidates = decode(output, layout, conf)
        kept = nms(candidates.boxes, candidates.scores, iou, candidates.classes)[:limit]
        found.append(Detections(candidates.boxes[kept], candidates.scores[kept], candidates.classes[kept],
                                candidates.anchors[kept]))
    return found


def detection_seeds(found: list[Detections], shape, layout: str, limit: int) -> np.ndarray:
    """rcam/seed for `limit` detections per image, [N, limit, *shape]: 1 at each detection's anchor and class
    score (its columns or rows after the box and objectness), 0 elsewhere; an image with fewer detections has zero
    seeds left over, whose maps are 0."""
    seeds = np.zeros((len(found), limit, *shape), dtype=np.float32)
    first_class = 5 if layout == "yolov5" else 4
    for n, detections in enumerate(found):
        for k, (anchor, cls) in enumerate(zip(detections.anchors, detections.classes)):
            if layout == "yolov5":
                seeds[n, k, anchor, first_class + cls] = 1.0
            else:
                seeds[n, k, first_class + cls, anchor] = 1.0
    return seeds
