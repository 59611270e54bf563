"""The seeds that explain a segmenter's [N, C, h, w] class logits (docs/design.md section 6).

The seed for class c is c's logits over a region, 0 elsewhere and in every other class: by default the pixels the
model labels c (its argmax; for a single-channel probability map, where it exceeds 0.5), or a region the user gives
(a box or a mask). Several classes per image are explained
in one run (top_k): by default the most frequent predicted classes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .errors import RcamError


def segment_classes(logits: np.ndarray, top_k: int, targets=None) -> np.ndarray:
    """[N, top_k] classes to explain: `targets` ([N] or [N, top_k]) where given, else each image's top_k most
    frequent predicted classes (most pixels first, ties to the lower class); -1 where fewer classes are predicted."""
    n, classes = logits.shape[:2]
    if targets is not None:
        chosen = np.broadcast_to(np.asarray(targets, dtype=np.int64).reshape(n, -1), (n, top_k)).copy()
        if ((chosen < -1) | (chosen >= classes)).any():
            raise RcamError(f"segment targets must be classes 0..{classes - 1}, got {np.unique(chosen).tolist()}")
        return chosen
    predicted = predicted_classes(logits).reshape(n, -1)
    chosen = np.full((n, top_k), -1, dtype=np.int64)
    for i, labels in enumerate(predicted):
        counts = np.bincount(labels[labels >= 0], minlength=classes)
        present = [c for c in np.argsort(-counts, kind="stable") if counts[c]][:top_k]
        chosen[i, :len(present)] = present
    return chosen


def class_regions(logits: np.ndarray, classes: np.ndarray, regions=None) -> np.ndarray:
    """[N, top_k, h, w] booleans, the pixels explained for each chosen class: where the model predicts it, or the
    given `regions` ([N, H, W] at input resolution, sampled at the output's pixel centres) for every class."""
    n, _, h, w = logits.shape
    if regions is not None:
        regions = np.asarray(regions, dtype=bool)
        if regions.ndim != 3 or len(regions) != n:
            raise RcamError(f"regions must be [N, H, W] booleans, one per image; got shape {list(regions.shape)}")
        rows = ((np.arange(h) + 0.5) * regions.shape[1] / h).astype(int)
        columns = ((np.arange(w) + 0.5) * regions.shape[2] / w).astype(int)
        sampled = regions[:, rows][:, :, columns]
        return np.repeat(sampled[:, None], classes.shape[1], axis=1) & (classes >= 0)[:, :, None, None]
    predicted = predicted_classes(logits)
    return (predicted[:, None] == classes[:, :, None, None]) & (classes >= 0)[:, :, None, None]


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """[N, h, w] the class each pixel is labelled: the argmax over the classes; for a single channel (a text or
    foreground probability map), 0 where it exceeds 0.5 (values in [0, 1]) or 0 (logits), else -1 (none)."""
    if logits.shape[1] > 1:
        return logits.argmax(1)
    threshold = 0.5 if logits.min() >= 0 and logits.max() <= 1 else 0.0
    return np.where(logits[:, 0] > threshold, 0, -1)


def segment_seeds(logits: np.ndarray, classes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """rcam/seed [N, top_k, C, h, w]: class classes[n, k]'s logits over masks[n, k], 0 elsewhere."""
    seeds = np.zeros((*classes.shape, *logits.shape[1:]), dtype=np.float32)
    for n, k in zip(*np.nonzero(classes >= 0)):
        c = classes[n, k]
        seeds[n, k, c] = np.where(masks[n, k], logits[n, c], 0.0)
    return seeds


def mask_region(preprocessing, mask: Image.Image, picture) -> np.ndarray:
    """[H, W] booleans at input resolution: a mask picture of the photo (non-zero: the region; stretched to the
    photo's size), placed as the preprocessing places the photo."""
    grey = mask.convert("L").point(lambda v: 255 if v else 0).resize(picture.size, Image.NEAREST)
    return np.asarray(preprocessing.placed(grey, fill=0)) > 127


def box_region(preprocessing, box, picture) -> np.ndarray:
    """[H, W] booleans at input resolution: a box (x1, y1, x2, y2) in the photo's own pixels, placed as the
    preprocessing places the photo (resized and cropped, or letterboxed)."""
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).rectangle(tuple(box), fill=255)
    return np.asarray(preprocessing.placed(mask, fill=0)) > 127
