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
    """`proto` with the shapes of its tensors as onnxruntime computes them."""
    try:
        return _runtime_pool_counts(proto, onnx.shape_inference.infer_shapes(proto, data_prop=True))
    except Exception as exc:
        raise ModelError(f"shape inference failed on the model: {exc}") from None


# ONNX's shape inference before opset 22 keeps a ceil_mode window that would start past the input and its left
# padding (MaxPool(2, 2, pads 1) on 7 rows: 5 windows); onnxruntime drops it, as PyTorch does (4), and so reads
# every tensor after such a pool one row or column smaller than ONNX's inference says.
CEIL_MODE_POOLS = ("MaxPool", "AveragePool")


def pool_output_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int, ceil_mode: int) -> int:
    """A pool's output length along one axis, as onnxruntime computes it."""
    span = size + begin + end - (kernel - 1) * dilation - 1
    if not ceil_mode:
        return span // stride + 1
    count = -(-span // stride) + 1
    return count - 1 if (count - 1) * stride >= size + begin else count


def _ceil_mode_pools(proto: onnx.ModelProto) -> list[int]:
    return [i for i, node in enumerate(proto.graph.node) if node.op_type in CEIL_MODE_POOLS and
            any(a.name == "ceil_mode" and a.i for a in node.attribute) and
            all(a.name != "auto_pad" or a.s in (b"", b"NOTSET") for a in node.attribute)]


def _dims(info: onnx.ValueInfoProto) -> list[int | None] | None:
    if not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]


def _runtime_pool_counts(proto: onnx.ModelProto, inferred: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes inferred again on a twin of `proto` whose ceil_mode pools are written in floor mode, their end pads
    grown to onnxruntime's window count, until the counts settle (each round settles at least the next pool); the
    result holds `proto`'s own nodes."""
    pools = _ceil_mode_pools(proto)
    if not pools:
        return inferred
    twin = onnx.ModelProto()
    twin.CopyFrom(proto)
    # Shapes recorded for what follows a pool, by ONNX's count (a graph output inference wrote) or by onnxruntime's
    # (a dynamo export's value_info), are inferred anew.
    after = _descendants(proto, [proto.graph.node[i] for i in pools])
    kept = [i for i in twin.graph.value_info if i.name not in after]
    del twin.graph.value_info[:]
    twin.graph.value_info.extend(kept)
    for output in twin.graph.output:
        if output.name in after:
            output.type.tensor_type.ClearField("shape")
    for _ in range(len(pools)):
        shapes = {i.name: _dims(i) for i in [*inferred.graph.input, *inferred.graph.value_info]}
        changed = False
        for index in pools:
            node, source = twin.graph.node[index], proto.graph.node[index]
            sizes = (shapes.get(node.input[0]) or [None])[2:]
            if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in source.attribute}
            rank = len(sizes)
            kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1] * rank)
            dilations, pads = attrs.get("dilations", [1] * rank), list(attrs.get("pads", [0] * (2 * rank)))
            ends = []
            for axis, size in enumerate(sizes):
                count = pool_output_size(size, kernel[axis], strides[axis], dilations[axis], pads[axis],
                                         pads[rank + axis], 1)
                reach = (count - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1
                ends.append(max(reach - size - pads[axis], 0))
            floor_mode = [a for a in node.attribute if a.name not in ("ceil_mode", "pads")]
            floor_mode.append(onnx.helper.make_attribute("pads", pads[:rank] + ends))
            if [a.SerializeToString() for a in floor_mode] != [a.SerializeToString() for a in node.attribute]:
                del node.attribute[:]
                node.attribute.extend(floor_mode)
                changed = True
        if not changed:
            break
        inferred = onnx.shape_inference.infer_shapes(twin, data_prop=True)
    del inferred.graph.node[:]
    inferred.graph.node.extend(proto.graph.node)
    return inferred


def _descendants(proto: onnx.ModelProto, nodes) -> set[str]:
    """Names of the tensors computed from the outputs of `nodes` (theirs included); `proto`'s nodes are sorted."""
    found = {o for node in nodes for o in node.output}
    for node in proto.graph.node:
        if any(i in found for i in node.input):
            found.update(node.output)
    return found


def onnx_inferred_dims(proto: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Where `proto` has a ceil_mode pool: the dims ONNX's own inference gives each tensor (as the checker and
    onnxruntime's graph resolution take them), declared value_info aside; otherwise nothing."""
    if not _ceil_mode_pools(proto):
        return {}
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(bare)
    infos = [*inferred.graph.value_info, *inferred.graph.output]
    return {i.name: dims for i in infos if (dims := _dims(i)) is not None}


def contradicts(dims: list[int | None] | None, shape) -> bool:
    """Whether two shapes hold different numbers on some axis."""
    return dims is not None and shape is not None and len(dims) == len(shape) and \
        any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(dims, shape))


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
