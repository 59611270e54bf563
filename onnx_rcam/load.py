"""Stage 1: read the model (external data too), check it, infer shapes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from .errors import ModelError

# The generated subgraph is written in opset 17's semantics (ReduceSum's axes as an input, ScatterElements'
# reduction, Shape's start and end); older models are upgraded to it.
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
    _drop_unused_domains(proto)
    try:
        upgraded = onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:
        raise ModelError(
            f"the model uses opset {default_opset(proto)}; upgrading it to opset {MIN_OPSET} failed: {exc}") from None
    if upgraded.ir_version < 4:
        _constant_initializers(upgraded)
    upgraded.ir_version = max(upgraded.ir_version, onnx.helper.find_min_ir_version_for(upgraded.opset_import))
    return upgraded


def _drop_unused_domains(proto: onnx.ModelProto) -> None:
    """Operator sets the graph imports but no node uses (Paddle2ONNX writes ('Paddle', 1)): onnx's version
    converter and IR lookup know no such domain and fail on it."""
    used = {node.domain for node in proto.graph.node} | {f.domain for f in proto.functions}
    kept = [entry for entry in proto.opset_import if entry.domain in ("", "ai.onnx") or entry.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def _constant_initializers(proto: onnx.ModelProto) -> None:
    """IR 3 lists every initializer among the graph inputs, and onnxruntime treats them as constants there. From IR 4
    on, an initializer that is also an input can be fed, so onnxruntime no longer folds or fuses it: taking them out
    of the inputs keeps the original's meaning and its rounding when the IR version is raised."""
    initializers = {i.name for i in proto.graph.initializer}
    kept = [i for i in proto.graph.input if i.name not in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed on the model: {exc}") from None


def fix_input_shape(proto: onnx.ModelProto, shape) -> None:
    """Give the image input (the graph input of `shape`'s rank) the dimensions in `shape`, in place: a number fixes
    a dimension, a name (e.g. "N") leaves it dynamic. A dimension the model already fixes must match."""
    initializers = {i.name for i in proto.graph.initializer}
    images = [i for i in proto.graph.input
              if i.name not in initializers and len(i.type.tensor_type.shape.dim) == len(shape)]
    if len(images) != 1:
        ranks = ", ".join(f"{i.name} (rank {len(i.type.tensor_type.shape.dim)})" for i in proto.graph.input
                          if i.name not in initializers)
        raise ModelError(f"--input-shape has {len(shape)} dimensions; the model's inputs are: {ranks}")
    dims = images[0].type.tensor_type.shape.dim
    for axis, (dim, wanted) in enumerate(zip(dims, shape)):
        if dim.HasField("dim_value") and dim.dim_value != wanted:
            raise ModelError(f"--input-shape gives {wanted} for axis {axis} of {images[0].name!r}, which the "
                             f"model fixes at {dim.dim_value}")
        if isinstance(wanted, int):
            dim.dim_value = wanted


def parse_shape(text: str) -> list[int | str]:
    """"N,3,224,224" or "1x3x224x224": numbers fix a dimension, names keep it dynamic."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if len(parts) < 2 or not all(parts):
        raise ModelError(f"cannot read the shape {text!r}: write it like N,3,224,224")
    shape = [int(p) if p.isdigit() else p for p in parts]
    if any(isinstance(d, int) and d == 0 for d in shape):
        raise ModelError(f"shape {text!r}: dimensions must be positive")
    return shape
