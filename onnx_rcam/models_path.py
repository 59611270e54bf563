"""Where the embedded default model and photos are installed (the repository's models/ folder)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "efficientnet_lite0.onnx"


def models_folder() -> Path:
    return Path(str(resources.files("onnx_rcam.models")))


def default_model_path() -> Path:
    """The bundled ImageNet-trained EfficientNet-Lite0 (Apache-2.0, see models/NOTICE)."""
    return models_folder() / DEFAULT_MODEL


def sample_images() -> list[Path]:
    return sorted((models_folder() / "images").glob("*.jpg"))
