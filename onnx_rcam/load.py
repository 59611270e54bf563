"""Stage 1: read the model (external data too), check it, infer shapes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from .errors import ModelError

# The generated subgraph uses ScatterElements(reduction="add"), which needs opset 16; older models are upgraded.
MIN_OPSET = 17


def load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Return a checked copy of `model`, upgraded to MIN_OPSET; the caller's proto and file are never modified."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except Exception as exc:  # onnx raises DecodeError, OSError, ValueError... for broken files
            raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the model fails onnx.checker: {exc}") from None
    return _upgrade_opset(proto)


def default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no version of the default ONNX operator set")


def _upgrade_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    if default_opset(proto) >= MIN_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:
        raise ModelError(
            f"the model uses opset {default_opset(proto)}; upgrading it to opset {MIN_OPSET} failed: {exc}") from None


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on the model: {exc}") from None
