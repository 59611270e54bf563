"""Reading photos and turning them into model input: presets that match how common models were trained."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RcamError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pixel_bounds(mean, std, pixel_range: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The least and greatest value per channel that (x - mean) / std makes of pixels x in [0, pixel_range]."""
    return tuple(-m / s for m, s in zip(mean, std)), tuple((pixel_range - m) / s for m, s in zip(mean, std))


IMAGENET_BOUNDS = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD)
CROP_FRACTION = 0.875  # resize the shorter side to size / 0.875 (256 for 224), then centre-crop: torchvision's


LETTERBOX_GRAY = 114  # ultralytics' padding colour
RESIZE_MODES = ("crop", "squash", "letterbox")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # the classic Caffe models' (VGG, ResNet, open_nsfw), pixels 0-255


@dataclass(frozen=True)
class Preprocessing:
    """Place the photo in the model input (resize), order its channels, scale pixels to [0, pixel_range], then
    (x - mean) / std per channel (in the model's channel order).

    resize: `crop` resizes the shorter side to resize_shorter and centre-crops `size` (torchvision's ImageNet
    evaluation); `squash` resizes to `size` whatever the aspect ratio (Keras applications, the official
    Relevance-CAM code); `letterbox` fits the whole photo in `size` keeping its aspect ratio and pads both sides
    evenly with gray 114 (ultralytics' YOLO)."""

    size: tuple[int, int]            # (height, width) of the model input
    resize_shorter: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    resize: str = "crop"
    channels: str = "RGB"
    pixel_range: float = 1.0

    def __post_init__(self):
        if self.resize not in RESIZE_MODES:
            raise RcamError(f"unknown resize {self.resize!r}; choose one of {', '.join(RESIZE_MODES)}")
        if self.channels not in ("RGB", "BGR"):
            raise RcamError(f"unknown channel order {self.channels!r}; choose RGB or BGR")

    @property
    def letterbox(self) -> bool:
        return self.resize == "letterbox"

    @staticmethod
    def preset(name: str, size: tuple[int, int], layout: str = "NCHW") -> "Preprocessing":
        shorter = round(min(size) / CROP_FRACTION)
        presets = {
            "imagenet": (IMAGENET_MEAN, IMAGENET_STD, {}),
            "imagenet-squash": (IMAGENET_MEAN, IMAGENET_STD, {"resize": "squash"}),
            "tf": ((0.5,) * 3, (0.5,) * 3, {}),  # [-1, 1] after Inception's 0.875 centre crop
            "tf-squash": ((0.5,) * 3, (0.5,) * 3, {"resize": "squash"}),  # [-1, 1], Keras applications
            "unit": ((0.0,) * 3, (1.0,) * 3, {}),
            "caffe": (CAFFE_MEAN_BGR, (1.0,) * 3, {"channels": "BGR", "pixel_range": 255.0}),
            "yolo": ((0.0,) * 3, (1.0,) * 3, {"resize": "letterbox"}),
        }
        if name not in presets:
            raise RcamError(f"unknown preprocessing preset {name!r}; choose one of {', '.join(presets)}")
        mean, std, options = presets[name]
        return Preprocessing(size, shorter, mean, std, layout, **options)

    @staticmethod
    def from_file(path: Path, layout: str = "NCHW") -> "Preprocessing":
        """A JSON sidecar: size (an int or [height, width]); resize (crop, squash or letterbox; default crop);
        resize_shorter (crop; default size / 0.875); mean and std (default 0 and 1); channels (RGB or BGR; default
        RGB); pixel_range (1: pixels in [0, 1], the default; 255: kept 0-255, as Caffe models take them)."""
        settings = json.loads(Path(path).read_text())
        size = settings["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return Preprocessing(size, settings.get("resize_shorter", round(min(size) / CROP_FRACTION)),
                             tuple(settings.get("mean", (0.0,) * 3)), tuple(settings.get("std", (1.0,) * 3)),
                             layout, settings.get("resize", "crop"), settings.get("channels", "RGB"),
                             float(settings.get("pixel_range", 1.0)))

    def _fit(self, width: int, height: int) -> tuple[float, int, int, int, int]:
        """Letterbox: the scale, the resized photo's width and height, and the left and top padding."""
        scale = min(self.size[0] / height, self.size[1] / width)
        resized_w, resized_h = round(width * scale), round(height * scale)
        return scale, resized_w, resized_h, (self.size[1] - resized_w) // 2, (self.size[0] - resized_h) // 2

    def photo_view(self, heatmap: np.ndarray, width: int, height: int):
        """(the part of a map at input resolution that shows the photo, the photo's region it covers) for overlay:
        the whole map over the centre crop or (squash) the whole photo, or the letterboxed photo's window of the
        map over the whole photo."""
        if self.resize == "squash":
            return heatmap, None
        if self.resize == "crop":
            return heatmap, self.crop_box(width, height)
        _, resized_w, resized_h, left, top = self._fit(width, height)
        return heatmap[..., top:top + resized_h, left:left + resized_w], None

    def to_photo(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Boxes (x1, y1, x2, y2) in model-input pixels as boxes in the photo's own pixels."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x1, y1, x2, y2 = self.crop_box(width, height)
        factor = np.array([(x2 - x1) / self.size[1], (y2 - y1) / self.size[0]] * 2)
        return boxes * factor + np.array([x1, y1, x1, y1])

    @property
    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The least and greatest value per channel of what this preprocessing makes of pixels."""
        return pixel_bounds(self.mean, self.std, self.pixel_range)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The rectangle of the photo's own pixel coordinates that the model input covers: the centre crop, the
        whole photo (squash), or the photo and its padding (letterbox, so beyond the photo)."""
        if self.resize == "squash":
            return (0.0, 0.0, float(width), float(height))
        if self.resize == "letterbox":
            scale, _, _, left, top = self._fit(width, height)
            return (-left / scale, -top / scale, (self.size[1] - left) / scale, (self.size[0] - top) / scale)
        scale = self.resize_shorter / min(width, height)
        crop_h, crop_w = self.size
        resized_w, resized_h = round(width * scale), round(height * scale)
        left, top = (resized_w - crop_w) // 2, (resized_h - crop_h) // 2
        return (left / scale, top / scale, (left + crop_w) / scale, (top + crop_h) / scale)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image as model input (C, H, W) or (H, W, C), float32."""
        return self._normalised(self.placed(image.convert("RGB")))

    def placed(self, image: Image.Image, fill: int = LETTERBOX_GRAY) -> Image.Image:
        """The picture where the model input has it, at the input's size, before scaling its values: resized and
        centre-cropped, squashed, or letterboxed with `fill` (also for masks of the photo, with fill 0)."""
        if self.resize == "squash":
            return image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        if self.letterbox:
            _, resized_w, resized_h, left, top = self._fit(image.width, image.height)
            canvas = Image.new(image.mode, (self.size[1], self.size[0]), (fill,) * len(image.getbands()))
            canvas.paste(image.resize((resized_w, resized_h), Image.BILINEAR), (left, top))
            return canvas
        scale = self.resize_shorter / min(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        crop_h, crop_w = self.size
        if resized.width < crop_w or resized.height < crop_h:  # a very elongated photo: fill the crop instead
            resized = image.resize((max(crop_w, resized.width), max(crop_h, resized.height)), Image.BILINEAR)
        left, top = (resized.width - crop_w) // 2, (resized.height - crop_h) // 2
        return resized.crop((left, top, left + crop_w, top + crop_h))

    def _normalised(self, picture: Image.Image) -> np.ndarray:
        pixels = np.asarray(picture, dtype=np.float32) / np.float32(255.0 / self.pixel_range)
        if self.channels == "BGR":
            pixels = pixels[..., ::-1]
        normalised = (pixels - np.float32(self.mean)) / np.float32(self.std)
        return (normalised.transpose(2, 0, 1) if self.layout == "NCHW" else normalised).astype(np.float32)


def sidecar(model) -> Path | None:
    """MODEL.preprocess.json beside a model file (MODEL.rcam.onnx shares its plain model's), if there is one."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(model)
    found = path.with_name(f"{path.name.removesuffix('.onnx').removesuffix('.rcam')}.preprocess.json")
    return found if found.is_file() else None


def input_bounds(model, preprocessing=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image values' bounds per channel (for the zbox rule) under `preprocessing`: a Preprocessing, a preset
    name, or a JSON file; by default the model's sidecar, else ImageNet's."""
    if isinstance(preprocessing, Preprocessing):
        return preprocessing.bounds
    if preprocessing is None:
        found = sidecar(model)
        return Preprocessing.from_file(found).bounds if found else IMAGENET_BOUNDS
    if Path(preprocessing).is_file():
        return Preprocessing.from_file(Path(preprocessing)).bounds
    return Preprocessing.preset(preprocessing, (224, 224)).bounds


def load_image(path: str | Path) -> Image.Image:
    """An RGB picture, upright as viewers show it (a phone photo's EXIF orientation applied); an unreadable file
    raises RcamError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RcamError(f"{path}: cannot read the image ({exc})") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str) -> Image.Image:
    """load_image for a file's bytes read elsewhere (onnx_rcam.distributed reads them from any filesystem); name
    is the file's, for the error. Pillow's own message would name the buffer, so an undecodable file is described
    in words that hold wherever its bytes came from."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:
        raise RcamError(f"{name}: cannot read the image (not a picture Pillow can decode)") from None
    except (OSError, ValueError) as exc:
        raise RcamError(f"{name}: cannot read the image ({exc})") from None


def find_images(inputs) -> list[Path]:
    """Files as given, and every image file under the given folders (sorted); a missing path is an error."""
    found: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found += sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif entry.is_file():
            found.append(entry)
        else:
            raise RcamError(f"{entry}: no such file or folder")
    return found


def input_layout(shape) -> str:
    """NCHW or NHWC, from where the 3 (or 1) colour channels sit in a 4-D input shape."""
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise RcamError(f"cannot tell the channel axis of input shape {shape}")
