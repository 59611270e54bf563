"""Faithfulness and localisation metrics of saliency maps (pure numpy; onnx_rcam/evaluate.py runs the model).

- Average Drop and Increase in Confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018, section 5.1):
  Y = the class score of the image, O = that of the image multiplied by the map (in [0, 1]);
  AD = mean over images of max(0, Y - O) / Y * 100; IC = the percentage of images with O > Y.
  Binarised, as the Relevance-CAM authors' evaluation keeps the map's top 50 % of pixels (their repository's issue
  #5): O is the score of the image multiplied by `top_mask` (1 on the top p % of pixels, 0 elsewhere), so that a
  map cannot win by covering more of the image.
- Deletion and insertion (Petsiuk et al., "RISE", BMVC 2018, section 4.1): pixels in order of decreasing saliency
  are removed from the image (set to the deletion baseline) or inserted into the insertion baseline, `steps` equal
  steps from none to all; the metric is the area under the class-score curve over the fraction of pixels changed
  (trapezoids). Lower deletion and higher insertion are better.
- Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018): a hit when the
  map's maximum lies within `tolerance` pixels (15, as the paper) of a ground-truth box.
- Energy-based pointing game (Wang et al., "Score-CAM", CVPRW 2020, section 4.3): the share of the map's sum that
  falls inside the boxes.

Every metric is a mean of per-photo values; `bootstrap_interval` gives its 95 % interval over photos, and
`paired_difference_interval` that of the difference between two maps measured on the same photos.
"""

from __future__ import annotations

import math

import numpy as np

POINTING_TOLERANCE = 15
TOP_PERCENT = 50.0        # the Relevance-CAM authors' binarisation
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def drops(full: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Each image's drop in percent, max(0, Y - O) / Y * 100, from its class scores Y (full) and O (masked): their
    mean is AD."""
    return np.maximum(0.0, full - masked) / full * 100


def increases(full: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """100 for each image that scores higher masked than whole, else 0: their mean is IC."""
    return (masked > full) * 100.0


def saliency_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first (ties in raster order, so every method breaks them alike)."""
    return np.argsort(-saliency.ravel(), kind="stable")


def top_mask(saliency: np.ndarray, percent: float = TOP_PERCENT) -> np.ndarray:
    """1.0 on the map's percent / 100 * pixels (rounded half up) most salient pixels, 0.0 elsewhere: exactly that
    many, ties at the threshold taken in raster order (saliency_order), so a flat map keeps its top rows and gains
    nothing."""
    order = saliency_order(saliency)
    mask = np.zeros(order.size, saliency.dtype)
    mask[order[:int(percent / 100 * order.size + 0.5)]] = 1
    return mask.reshape(saliency.shape)


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


def known_mean(values) -> float:
    """The mean of the values that are not NaN (a photo without boxes has no pointing value); NaN if none is."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan


def bootstrap_interval(values, photos=None, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-photo values: `resamples` times, as many photos as there are
    drawn with replacement, the mean recomputed; the interval holds the middle `level` of those means. photos: the
    photo of each value where a photo has several (the detections of one image): photos are drawn, and the mean is
    over all values of the photos drawn. NaN values (a photo without boxes) are left out. The fixed seed draws the
    same photos for every map, so two maps' intervals come from the same resamples."""
    values = np.asarray(values, np.float64)
    photos = np.arange(values.size) if photos is None else np.asarray(photos)
    kept = ~np.isnan(values)
    if not kept.any():
        return math.nan, math.nan
    _, photo_index = np.unique(photos[kept], return_inverse=True)
    sums = np.bincount(photo_index, weights=values[kept])
    counts = np.bincount(photo_index).astype(np.float64)
    drawn = np.random.default_rng(seed).integers(0, sums.size, (resamples, sums.size))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference_interval(first, second, photos=None, **options) -> tuple[float, float]:
    """The bootstrap interval of mean(first) - mean(second), two maps' per-photo values on the same photos, each
    resample drawing the same photos for both: an interval that excludes 0 is a difference beyond the photos'
    sampling noise."""
    return bootstrap_interval(np.asarray(first, np.float64) - np.asarray(second, np.float64), photos, **options)
