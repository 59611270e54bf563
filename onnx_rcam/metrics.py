"""Faithfulness and localisation metrics of saliency maps (pure numpy; onnx_rcam/evaluate.py runs the model).

- Average Drop and Increase in Confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018, section 5.1):
  Y = the class score of the image, O = that of the image multiplied by the map (in [0, 1]);
  AD = mean over images of max(0, Y - O) / Y * 100; IC = the percentage of images with O > Y.
- Deletion and insertion (Petsiuk et al., "RISE", BMVC 2018, section 4.1): pixels in order of decreasing saliency
  are removed from the image (set to the deletion baseline) or inserted into the insertion baseline, `steps` equal
  steps from none to all; the metric is the area under the class-score curve over the fraction of pixels changed
  (trapezoids). Lower deletion and higher insertion are better.
- Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018): a hit when the
  map's maximum lies within `tolerance` pixels (15, as the paper) of a ground-truth box.
- Energy-based pointing game (Wang et al., "Score-CAM", CVPRW 2020, section 4.3): the share of the map's sum that
  falls inside the boxes.
"""

from __future__ import annotations

import numpy as np

POINTING_TOLERANCE = 15


def average_drop(full: np.ndarray, masked: np.ndarray) -> float:
    """AD in percent from the class scores Y (full) and O (masked) of each image."""
    return float(np.mean(np.maximum(0.0, full - masked) / full) * 100)


def increase_in_confidence(full: np.ndarray, masked: np.ndarray) -> float:
    """IC in percent: how many images score higher when multiplied by their map."""
    return float(np.mean(masked > full) * 100)


def saliency_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first (ties in raster order, so every method breaks them alike)."""
    return np.argsort(-saliency.ravel(), kind="stable")


def perturbation_series(image: np.ndarray, start: np.ndarray, end: np.ndarray, saliency: np.ndarray,
                        steps: int, channels_last: bool = False) -> np.ndarray:
    """steps + 1 images from `start` to `end`: at step k, the k/steps most salient pixels hold `end`'s values and
    the rest `start`'s. Deletion: start = image, end = baseline; insertion: start = baseline, end = image.
    image, start, end: one prepared image (C, H, W), or (H, W, C) with channels_last."""
    order = saliency_order(saliency)
    counts = np.round(np.linspace(0, order.size, steps + 1)).astype(int)
    changed = np.zeros([steps + 1, order.size], bool)
    for k, count in enumerate(counts):
        changed[k, order[:count]] = True
    changed = changed.reshape(steps + 1, *saliency.shape)
    changed = changed[..., None] if channels_last else changed[:, None]
    return np.where(changed, end[None], start[None]).astype(image.dtype)


def area_under_curve(scores: np.ndarray) -> float:
    """Area under scores sampled at equal steps over [0, 1] (trapezoids)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float((scores[:-1] + scores[1:]).sum() / (2 * (len(scores) - 1)))


def _distance_to_box(y: float, x: float, box) -> float:
    x0, y0, x1, y1 = box
    return float(np.hypot(max(x0 - x, 0, x - x1), max(y0 - y, 0, y - y1)))


def pointing_hit(saliency: np.ndarray, boxes, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Whether the map's maximum (the first, in raster order) is within `tolerance` pixels of a box (x0, y0, x1, y1,
    in the map's pixels, right and bottom exclusive; pixel (y, x) has its centre at (y + 0.5, x + 0.5))."""
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return any(_distance_to_box(y + 0.5, x + 0.5, box) <= tolerance for box in boxes)


def energy_in_boxes(saliency: np.ndarray, boxes) -> float:
    """The share of the map's sum on pixels whose centres lie inside a box; 0 for an all-zero map."""
    inside = np.zeros(saliency.shape, bool)
    rows, cols = np.arange(saliency.shape[0]) + 0.5, np.arange(saliency.shape[1]) + 0.5
    for x0, y0, x1, y1 in boxes:
        inside |= ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    total = float(saliency.sum())
    return float(saliency[inside].sum()) / total if total > 0 else 0.0


def gaussian_blur(image: np.ndarray, sigma: float = 5.0, size: int = 11, channels_last: bool = False) -> np.ndarray:
    """The insertion baseline: each channel blurred by a size x size Gaussian (RISE's klen 11, sigma 5), edges
    replicated."""
    taps = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    taps /= taps.sum()
    planes = np.moveaxis(image, -1, 0) if channels_last else image
    pad = size // 2
    padded = np.pad(planes.astype(np.float64), [(0, 0), (pad, pad), (pad, pad)], mode="edge")
    rows = sum(t * padded[:, i:i + planes.shape[1], :] for i, t in enumerate(taps))
    blurred = sum(t * rows[:, :, i:i + planes.shape[2]] for i, t in enumerate(taps))
    blurred = blurred.astype(image.dtype)
    return np.moveaxis(blurred, 0, -1) if channels_last else blurred
