"""onnx_rcam/segmentation.py: which classes a segmenter's explanation covers, over which pixels, and the seeds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnx_rcam import RcamError
from onnx_rcam.images import Preprocessing
from onnx_rcam.segmentation import box_region, class_regions, mask_region, segment_classes, segment_seeds

# Two images, 3 classes, 2 x 3 pixels. Image 0 predicts [[0, 0, 2], [2, 2, 2]]; image 1 everything class 1.
LOGITS = np.zeros((2, 3, 2, 3), np.float32)
LOGITS[0, 0, 0, :2] = 5.0
LOGITS[0, 2] = np.array([[1, 1, 4], [3, 3, 3]])
LOGITS[1, 1] = 2.0


def test_classes_are_the_most_frequent_predictions():
    np.testing.assert_array_equal(segment_classes(LOGITS, 2), [[2, 0], [1, -1]])  # -1: no second class predicted
    np.testing.assert_array_equal(segment_classes(LOGITS, 1, targets=[0, 2]), [[0], [2]])
    with pytest.raises(RcamError, match="classes 0..2"):
        segment_classes(LOGITS, 1, targets=[3, 0])


def test_regions_are_the_predicted_pixels_or_given():
    classes = np.array([[2, 0], [1, -1]])
    regions = class_regions(LOGITS, classes)
    np.testing.assert_array_equal(regions[0, 0], [[0, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(regions[0, 1], [[1, 1, 0], [0, 0, 0]])
    assert regions[1, 0].all() and not regions[1, 1].any()
    given = np.zeros((2, 4, 6), bool)  # at twice the output's resolution
    given[:, :2, :2] = True
    regions = class_regions(LOGITS, classes, given)
    np.testing.assert_array_equal(regions[0, 0], [[1, 0, 0], [0, 0, 0]])
    assert not regions[1, 1].any()  # no class there, no region


def test_seeds_hold_the_class_logits_over_the_region():
    classes = np.array([[2, 0], [1, -1]])
    seeds = segment_seeds(LOGITS, classes, class_regions(LOGITS, classes))
    assert seeds.shape == (2, 2, 3, 2, 3)
    np.testing.assert_array_equal(seeds[0, 0, 2], [[0, 0, 4], [3, 3, 3]])
    np.testing.assert_array_equal(seeds[0, 1, 0], [[5, 5, 0], [0, 0, 0]])
    assert seeds[0, 0, :2].sum() == 0 and seeds[1, 1].sum() == 0
    np.testing.assert_array_equal(seeds[1, 0, 1], np.full((2, 3), 2))


def test_a_box_lands_where_the_preprocessing_puts_the_photo():
    """The whole photo as the box: under the letterbox, every input pixel of the photo and none of the padding."""
    preprocessing = Preprocessing.preset("yolo", (64, 64))
    region = box_region(preprocessing, (0, 0, 80, 40), Image.new("RGB", (80, 40)))
    assert region.shape == (64, 64) and region[16:48].all() and not region[:16].any() and not region[48:].any()
    half = box_region(Preprocessing.preset("unit", (64, 64)), (0, 0, 40, 40), Image.new("RGB", (40, 80)))
    assert half[:24].all() and not half[40:].any()  # the upper half of a tall photo, centre-cropped


def test_a_single_channel_map_is_thresholded():
    """[N, 1, h, w] (a text or foreground map): the region is where it exceeds 0.5 (probabilities) or 0 (logits);
    an image with no such pixel explains nothing."""
    probabilities = np.array([[[[0.2, 0.7], [0.9, 0.4]]], [[[0.1, 0.1], [0.3, 0.2]]]], np.float32)
    classes = segment_classes(probabilities, 1)
    np.testing.assert_array_equal(classes, [[0], [-1]])
    np.testing.assert_array_equal(class_regions(probabilities, classes)[0, 0], [[0, 1], [1, 0]])
    logits = probabilities - 0.5
    np.testing.assert_array_equal(class_regions(logits, segment_classes(logits, 1))[0, 0], [[0, 1], [1, 0]])


def test_a_mask_picture_lands_where_the_preprocessing_puts_the_photo():
    mask = Image.new("L", (10, 5), 0)
    mask.paste(255, (0, 0, 5, 5))  # the left half, stretched over an 80 x 40 photo
    region = mask_region(Preprocessing.preset("yolo", (64, 64)), mask, Image.new("RGB", (80, 40)))
    assert region[16:48, :32].all() and not region[16:48, 32:].any() and not region[:16].any()
