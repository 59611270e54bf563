"""The metrics and the box readers, on values worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_rcam import metrics
from onnx_rcam.boxes import read_boxes, to_input_frame
from onnx_rcam.errors import RcamError


def test_average_drop_and_increase_in_confidence():
    full, masked = np.array([0.8, 0.5, 0.2, 0.4]), np.array([0.4, 0.5, 0.3, 0.1])
    # drops: 0.4 / 0.8 = 50 %, 0, 0 (an increase counts as 0), 0.3 / 0.4 = 75 %: mean 31.25 %
    np.testing.assert_allclose(metrics.drops(full, masked), [50, 0, 0, 75])
    assert metrics.drops(full, masked).mean() == pytest.approx(31.25)
    np.testing.assert_array_equal(metrics.increases(full, masked), [0, 0, 100, 0])


def test_top_mask_keeps_exactly_the_top_percent():
    saliency = np.array([[0.1, 0.9], [0.5, 0.5]])
    # (0, 1) first, then the tie (1, 0) / (1, 1) in raster order
    np.testing.assert_array_equal(metrics.top_mask(saliency, 50), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(metrics.top_mask(saliency, 25), [[0, 1], [0, 0]])
    np.testing.assert_array_equal(metrics.top_mask(saliency, 75), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(metrics.top_mask(saliency, 100), np.ones([2, 2]))
    # 2.5 of 5 pixels rounds up; a flat map keeps its first pixels, so covering everything earns nothing
    np.testing.assert_array_equal(metrics.top_mask(np.ones([1, 5]), 50), [[1, 1, 1, 0, 0]])
    flat = metrics.top_mask(np.full([4, 4], 0.5, np.float32), 50)
    assert flat.dtype == np.float32 and flat[:2].all() and not flat[2:].any()


def test_bootstrap_of_a_constant_has_zero_width():
    assert metrics.bootstrap_interval([0.1] * 7) == (pytest.approx(0.1), pytest.approx(0.1))
    low, high = metrics.bootstrap_interval([0.1] * 7)
    assert low == high
    assert metrics.bootstrap_interval([3.0, np.nan, 3.0]) == (3.0, 3.0)   # NaN (no boxes) left out
    assert all(np.isnan(metrics.bootstrap_interval([np.nan, np.nan])))


def test_bootstrap_percentiles_worked_by_hand():
    # two photos, 0 and 1: resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert metrics.bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    assert metrics.bootstrap_interval([0.0, 1.0], level=0.4) == (0.5, 0.5)
    # four photos, one of them 1: the mean is Binomial(4, 1/4) / 4; P(mean <= 0.5) = 0.949 < 0.975 <= P(<= 0.75)
    assert metrics.bootstrap_interval([0.0, 0.0, 1.0, 0.0]) == (0.0, 0.75)


def test_bootstrap_matches_a_direct_numpy_computation():
    values = np.array([0.31, 0.02, 0.77, 0.45, 0.12, 0.90, 0.05, 0.66, 0.38])
    draws = np.random.default_rng(0).integers(0, values.size, size=(2000, values.size))
    expected = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    np.testing.assert_allclose(metrics.bootstrap_interval(values), expected, rtol=1e-12)
    assert metrics.bootstrap_interval(values, seed=1) != metrics.bootstrap_interval(values)


def test_bootstrap_draws_photos_not_values():
    # photo 0 holds two detections (1, 1), photo 1 one (0): a draw of both photos averages 3 values to 2/3, the
    # draws of one photo twice give 1 or 0 (1/4 each)
    assert metrics.bootstrap_interval([1.0, 1.0, 0.0], photos=[0, 0, 1], level=0.4) == (
        pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert metrics.bootstrap_interval([1.0, 1.0, 0.0], photos=[0, 0, 1]) == (0.0, 1.0)


def test_paired_difference_interval():
    first = np.array([0.5, 0.2, 0.9, 0.4, 0.7])
    # a constant lead on every photo is a sure win, whatever the spread between photos
    assert metrics.paired_difference_interval(first + 0.1, first) == (pytest.approx(0.1), pytest.approx(0.1))
    second = np.array([0.4, 0.3, 0.6, 0.4, 0.5])
    np.testing.assert_allclose(metrics.paired_difference_interval(first, second),
                               metrics.bootstrap_interval(first - second))
    low, high = metrics.paired_difference_interval(first, second)
    assert low < 0.1 < high and low < 0   # photo 1 goes the other way


def test_area_under_curve_is_the_trapezoid_mean():
    assert metrics.area_under_curve([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert metrics.area_under_curve([0.0, 1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.875)


def test_deletion_series_removes_the_most_salient_pixels_first():
    image = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2)  # 2 channels, 2 x 2
    saliency = np.array([[0.1, 0.9], [0.5, 0.5]])  # order: (0, 1), then (1, 0) before (1, 1) (raster), (0, 0)
    series = metrics.perturbation_series(image, image, np.zeros_like(image), saliency, steps=4)
    assert series.shape == (5, 2, 2, 2)
    np.testing.assert_array_equal(series[0], image)
    np.testing.assert_array_equal(series[1][:, 0, 1], [0, 0])
    np.testing.assert_array_equal(series[2][:, 1], [[0, 4], [0, 8]])  # (1, 0) gone, (1, 1) not yet
    np.testing.assert_array_equal(series[3][:, 0, 0], [1, 5])
    assert not series[4].any()
    inserted = metrics.perturbation_series(image, np.zeros_like(image), image, saliency, steps=2)
    np.testing.assert_array_equal(inserted[1], [[[0, 2], [3, 0]], [[0, 6], [7, 0]]])
    last = metrics.perturbation_series(image.transpose(1, 2, 0), image.transpose(1, 2, 0) * 0,
                                       image.transpose(1, 2, 0), saliency, steps=4, channels_last=True)
    np.testing.assert_array_equal(last[1].transpose(2, 0, 1), np.where([[0, 1], [0, 0]], image, 0))


def test_pointing_hit_with_tolerance():
    saliency = np.zeros([100, 100])
    saliency[50, 80] = 1  # centre (50.5, 80.5)
    assert metrics.pointing_hit(saliency, [(70, 40, 90, 60)])
    assert metrics.pointing_hit(saliency, [(0, 0, 66, 100)])      # 14.5 px left of it
    assert not metrics.pointing_hit(saliency, [(0, 0, 65, 100)])  # 15.5 px
    assert not metrics.pointing_hit(saliency, [])


def test_energy_in_boxes():
    saliency = np.zeros([4, 4])
    saliency[0, 0], saliency[3, 3], saliency[1, 2] = 2.0, 1.0, 1.0
    assert metrics.energy_in_boxes(saliency, [(0, 0, 2, 2)]) == pytest.approx(0.5)
    assert metrics.energy_in_boxes(saliency, [(0, 0, 2, 2), (2, 1, 3, 2), (0, 0, 1, 1)]) == pytest.approx(0.75)
    assert metrics.energy_in_boxes(np.zeros([4, 4]), [(0, 0, 4, 4)]) == 0.0


def test_gaussian_blur_keeps_constants_and_smooths_an_impulse():
    constant = np.full([3, 20, 20], 0.7, np.float32)
    np.testing.assert_allclose(metrics.gaussian_blur(constant), constant, rtol=1e-6)
    impulse = np.zeros([1, 21, 21], np.float32)
    impulse[0, 10, 10] = 1
    blurred = metrics.gaussian_blur(impulse)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-5) and blurred[0, 10, 10] < 0.02
    assert blurred[0, 10, 5] == pytest.approx(blurred[0, 5, 10]) and blurred[0, 10, 4] == 0


def test_boxes_from_voc_coco_and_csv(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation><filename>a.jpg</filename><object><bndbox><xmin>11</xmin><ymin>21</ymin>"
                               "<xmax>50</xmax><ymax>60</ymax></bndbox></object><object><bndbox><xmin>1</xmin>"
                               "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    assert read_boxes(voc) == {"a.jpg": [(10, 20, 50, 60), (0, 0, 5, 5)]}
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "sub/b.png"}, {"id": 8, "file_name": "c.png"}],
                                "annotations": [{"image_id": 7, "bbox": [1, 2, 10, 20]}]}))
    assert read_boxes(coco) == {"b.png": [(1, 2, 11, 22)], "c.png": []}
    table = tmp_path / "boxes.csv"
    table.write_text("image,xmin,ymin,xmax,ymax\nd.jpg,0,0,4,4\nd.jpg,1,1,2,2\n")
    assert read_boxes(table) == {"d.jpg": [(0, 0, 4, 4), (1, 1, 2, 2)]}
    (tmp_path / "bad.csv").write_text("image,x\nd.jpg,1\n")
    with pytest.raises(RcamError, match="cannot read boxes"):
        read_boxes(tmp_path / "bad.csv")
    with pytest.raises(RcamError, match="must be a Pascal VOC"):
        read_boxes(tmp_path / "x.txt")


def test_boxes_into_the_model_frame():
    # a 400 x 300 photo, centre crop 300 x 300 from x = 50, model input 100 x 100: scale 1/3
    crop = (50.0, 0.0, 350.0, 300.0)
    framed = to_input_frame([(80, 30, 140, 90), (0, 0, 40, 40), (300, 150, 400, 300)], crop, (100, 100))
    np.testing.assert_allclose(framed, [(10, 10, 30, 30), (250 / 3, 50, 100, 100)])
