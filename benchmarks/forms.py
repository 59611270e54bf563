"""Deployed forms of the benchmarked models, made by the tools that users deploy with; shared by speed.py and
cuda_check.py.

- fp16: onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True): float16 weights and
  activations, float32 input and outputs (a Cast at each end), as GPU deployments usually keep them. Explained
  twice: augment(precision="fp32") (the default: the backward pass in float32, reading the forward's float16
  tensors through one Cast each) and augment(precision="fp16") (the backward pass in float16).
- int8: onnxruntime.quantization.quant_pre_process (symbolic shape inference and basic optimisations, as
  onnxruntime's documentation prescribes), then quantize_static in the QDQ format, signed 8-bit activations and
  weights (S8S8, onnxruntime's recommended default), weights per channel, MinMax calibration on the mirror images of
  the bundled photos (PHOTOS), preprocessed as the model expects (made by tests/deployed.py). Explained with
  augment(precision="fp32"): weights dequantized at augment time, float32 backward.

The photos themselves, not mirrored, are what speed.py compares each form's classes and maps on (photo_batch).

Needs onnxconverter-common for fp16 (`pip install onnxconverter-common`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configurations import BUNDLED_MODEL, Subject

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import deployed  # noqa: E402 - the deployed-forms tests' makers: the real tools, called the same way

MODELS = BUNDLED_MODEL.parent
PHOTOS = sorted((MODELS / "images").glob("*.jpg"))
# The models that speed.py and cuda_check.py measure in their deployed forms too.
FORM_MODELS = ("resnet50", "efficientnet_lite0")


@dataclass(frozen=True)
class Form:
    name: str  # a file-name-safe key: fp16, int8
    label: str  # how tables name the model's form
    backwards: tuple[str, ...]  # the augment precisions it is explained with, the first the default
    made_by: str  # the call that makes it, for the reports


FORMS = {
    "fp16": Form("fp16", "fp16", ("fp32", "fp16"),
                 "onnxconverter_common.float16.convert_float_to_float16(model, keep_io_types=True)"),
    "int8": Form("int8", "int8 QDQ", ("fp32",),
                 "quant_pre_process, then onnxruntime.quantization.quantize_static(quant_format=QuantFormat.QDQ, "
                 "activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True), MinMax "
                 f"calibration on the mirror images of the {len(PHOTOS)} bundled photos"),
}


def photo_batch(subject: Subject, mirrored: bool = False) -> np.ndarray:
    """The bundled photos (or their mirror images), preprocessed as `subject` expects: [photos, 3, 224, 224]."""
    from PIL import Image

    from onnx_rcam.images import Preprocessing

    if subject.zoo_builder is None:
        preprocessing = Preprocessing.from_file(BUNDLED_MODEL.with_name(BUNDLED_MODEL.stem + ".preprocess.json"))
    else:
        preprocessing = Preprocessing.preset("imagenet", (224, 224))
    photos = [Image.open(path).convert("RGB") for path in PHOTOS]
    if mirrored:
        photos = [photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for photo in photos]
    return np.stack([preprocessing(photo) for photo in photos]).astype(np.float32)


def make_fp16(plain: Path, target: Path) -> Path:
    try:
        return deployed.fp16(plain, target, keep_io_types=True)
    except ImportError as error:
        raise SystemExit("the fp16 form needs onnxconverter-common: pip install onnxconverter-common "
                         "(or leave it out with --forms int8, or --forms none)") from error


def make_int8(plain: Path, target: Path, subject: Subject) -> Path:
    preprocessed = deployed.quant_preprocessed(plain, target.with_name(target.stem + ".quant-preprocessed.onnx"))
    deployed.quantized(preprocessed, target, photo_batch(subject, mirrored=True), per_channel=True)
    preprocessed.unlink()
    return target


def make_form(form: str, subject: Subject, plain: Path, folder: Path | None = None) -> Path:
    """The file of `form` of the plain float32 model `plain`, in `folder` (default: beside it), made once."""
    target = (folder or plain.parent) / f"{plain.stem}.{form}.onnx"
    if target.exists():
        return target
    if form == "fp16":
        return make_fp16(plain, target)
    if form == "int8":
        return make_int8(plain, target, subject)
    raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")

