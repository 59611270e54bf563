"""The bundled photos, preprocessed as models/efficientnet_lite0.preprocess.json says (Pillow, tests only)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from onnx_rcam.models_path import models_folder, sample_images


def preprocess(path, settings: dict) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = settings["resize_shorter"] / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    size = settings["size"]
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    normalised = (pixels - np.float32(settings["mean"])) / np.float32(settings["std"])
    return normalised.transpose(2, 0, 1).astype(np.float32)


def bundled_batch() -> np.ndarray:
    settings = json.loads((models_folder() / "efficientnet_lite0.preprocess.json").read_text())
    return np.stack([preprocess(path, settings) for path in sample_images()])
