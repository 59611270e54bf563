"""Reading photos and preprocessing them as common models were trained."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnx_rcam import RcamError
from onnx_rcam.images import Preprocessing, find_images, input_layout, load_image


def gradient_photo(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    return Image.fromarray(x.astype(np.uint8))


@pytest.mark.parametrize("preset, low, high", [("imagenet", -2.2, 2.7), ("tf", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_presets_scale_pixels(preset, low, high):
    prep = Preprocessing.preset(preset, (224, 224))
    tensor = prep(gradient_photo(400, 300))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert low - 0.05 <= tensor.min() and tensor.max() <= high + 0.05
    white = prep(Image.new("RGB", (300, 300), (255, 255, 255)))
    np.testing.assert_allclose(white.max(), high if preset != "imagenet" else (1 - 0.406) / 0.225, rtol=1e-5)


def test_resize_shorter_side_then_centre_crop():
    prep = Preprocessing.preset("unit", (224, 224), layout="NHWC")
    assert prep.resize_shorter == 256
    tensor = prep(gradient_photo(512, 256))  # resized to 512 x 256, the crop keeps the middle columns
    assert tensor.shape == (224, 224, 3)
    assert abs(float(tensor[:, 112].mean()) - 0.5) < 0.02
    left, top, right, bottom = prep.crop_box(512, 256)
    assert (left, top, right, bottom) == (144.0, 16.0, 368.0, 240.0)


def test_find_images_walks_folders_and_filters(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.webp", "sub/d.bmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images([tmp_path])]
    assert found == ["a.PNG", "b.jpg", "sub/c.webp", "sub/d.bmp"]
    with pytest.raises(RcamError, match="no such file or folder"):
        find_images([tmp_path / "missing"])


def test_unreadable_image_names_the_file(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    with pytest.raises(RcamError, match="broken.jpg: cannot read the image"):
        load_image(broken)


def test_layout_is_read_from_the_input_shape():
    assert input_layout(["n", 3, 224, 224]) == "NCHW"
    assert input_layout(["n", 224, 224, 3]) == "NHWC"
    with pytest.raises(RcamError, match="channel axis"):
        input_layout(["n", 8, 224, 224])


def test_letterbox_pads_evenly_with_gray():
    """yolo: a 80 x 40 photo in a 64 x 64 input is resized by 0.8 to 64 x 32 and padded 16 rows above and below
    with gray 114 (ultralytics' LetterBox); values in [0, 1]."""
    preprocessing = Preprocessing.preset("yolo", (64, 64))
    x = preprocessing(Image.new("RGB", (80, 40), (200, 200, 200)))
    assert x.shape == (3, 64, 64)
    np.testing.assert_allclose(x[:, :16], 114 / 255)
    np.testing.assert_allclose(x[:, 48:], 114 / 255)
    np.testing.assert_allclose(x[:, 16:48], 200 / 255)


def test_letterbox_odd_padding_goes_to_the_bottom():
    preprocessing = Preprocessing.preset("yolo", (8, 8))
    x = preprocessing(Image.new("RGB", (8, 3), (0, 0, 0)))
    assert np.all(x[:, :2] > 0.4) and np.all(x[:, 2:5] == 0) and np.all(x[:, 5:] > 0.4)


@pytest.mark.parametrize("preset", ["yolo", "imagenet"])
def test_boxes_and_maps_map_back_to_the_photo(preset):
    """A box in input pixels maps to the photo (letterbox: (x - pad) / scale; centre crop: scaled and offset by the
    crop), and the part of a map that shows the photo is what overlay stretches over it."""
    preprocessing = Preprocessing.preset(preset, (64, 64))
    photo_box = preprocessing.to_photo(np.array([[10.0, 20.0, 40.0, 44.0]]), 60, 30)[0]
    heat = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    shown, box = preprocessing.photo_view(heat, 60, 30)
    if preset == "yolo":  # scale 64 / 60, 32 rows of photo from row 16
        np.testing.assert_allclose(photo_box, [9.375, 3.75, 37.5, 26.25])
        assert box is None and shown.shape == (32, 64) and shown[0, 0] == heat[16, 0]
    else:  # shorter side 30 -> 73, crop 64 x 64 from the 146 x 73 resize: the photo's x 18.5 ... 44.9, y 2.5 ...
        x1, y1, x2, y2 = preprocessing.crop_box(60, 30)
        np.testing.assert_allclose(photo_box, [x1 + 10 * (x2 - x1) / 64, y1 + 20 * (y2 - y1) / 64,
                                               x1 + 40 * (x2 - x1) / 64, y1 + 44 * (y2 - y1) / 64])
        assert box == (x1, y1, x2, y2) and shown is heat


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with orientation 6 (rotate 90 degrees clockwise to view) is read upright: its
    left column (red) becomes the top row."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :5] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert upright.shape == (40, 20, 3)
    assert upright[:4, :, 0].mean() > 200 and upright[-4:, :, 0].mean() < 50


def test_caffe_is_bgr_from_0_to_255_less_the_mean():
    """caffe: the classic Caffe models' input, BGR pixels 0-255 less the ImageNet mean, no std; bounds to match."""
    preprocessing = Preprocessing.preset("caffe", (8, 8))
    x = preprocessing(Image.new("RGB", (8, 8), (10, 20, 30)))
    np.testing.assert_allclose(x[:, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    low, high = preprocessing.bounds
    np.testing.assert_allclose(low, [-103.939, -116.779, -123.68])
    np.testing.assert_allclose(high, [255 - 103.939, 255 - 116.779, 255 - 123.68])


def test_squash_resizes_without_a_crop_and_maps_back():
    """squash: the whole photo stretched to the input (Keras applications, the official Relevance-CAM code)."""
    preprocessing = Preprocessing.preset("imagenet-squash", (8, 8))
    left_red = Image.new("RGB", (40, 10), (0, 0, 0))
    left_red.paste((255, 0, 0), (0, 0, 20, 10))
    x = preprocessing(left_red)
    assert x[0, :, :3].min() > 1.5 and x[0, :, 5:].max() < -1.5  # red on the left half, not cropped away
    assert preprocessing.crop_box(40, 10) == (0.0, 0.0, 40.0, 10.0)
    np.testing.assert_allclose(preprocessing.to_photo([[0, 0, 4, 8]], 40, 10), [[0, 0, 20, 10]])
    heat = np.ones((8, 8))
    assert preprocessing.photo_view(heat, 40, 10) == (heat, None)


def test_sidecar_expresses_every_option(tmp_path):
    path = tmp_path / "model.preprocess.json"
    path.write_text('{"size": [6, 8], "resize": "squash", "channels": "BGR", "pixel_range": 255, '
                    '"mean": [1, 2, 3]}')
    preprocessing = Preprocessing.from_file(path)
    assert (preprocessing.size, preprocessing.resize, preprocessing.channels, preprocessing.pixel_range,
            preprocessing.std) == ((6, 8), "squash", "BGR", 255.0, (1.0, 1.0, 1.0))
    x = preprocessing(Image.new("RGB", (3, 3), (10, 20, 30)))
    np.testing.assert_allclose(x[:, 0, 0], [29, 18, 7])
    path.write_text('{"size": 8, "resize": "stretch"}')
    with pytest.raises(RcamError, match="unknown resize 'stretch'"):
        Preprocessing.from_file(path)
