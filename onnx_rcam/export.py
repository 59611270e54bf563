"""Stage 6: join the generated nodes to the untouched original graph, declare the contract's interface, check, save."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from .builder import Builder
from .errors import ModelError, RcamError


def assemble(original: onnx.ModelProto, b: Builder) -> onnx.ModelProto:
    """The original model plus the generated nodes, inputs and outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    available |= {o for n in graph.node for o in n.output} | {i.name for i in b.initializers}
    graph.node.extend(b.toposorted(available))
    graph.initializer.extend(b.initializers)
    graph.input.extend(b.inputs)
    for name, elem_type, shape in b.outputs:
        graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))
    _check_references(graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise RcamError(f"internal error: the augmented model fails onnx.checker: {exc}") from None
    return model


def _check_references(graph: onnx.GraphProto) -> None:
    """Every tensor a generated node reads must exist in the joined graph (catches a canonicalize rename)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    known |= {o for n in graph.node for o in n.output}
    missing = sorted({i for n in graph.node for i in n.input if i not in known})
    if missing:
        raise RcamError(f"internal error: generated nodes read tensors that the model lacks: {missing[:5]}")


def save(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> Path:
    """Write atomically: a temporary file in the same folder, renamed into place only once complete."""
    path = Path(path)
    if path.exists() and not force:
        raise RcamError(f"{path} exists; pass --force (force=True) to overwrite it")
    if not path.parent.exists():
        raise RcamError(f"cannot write {path}: folder {path.parent} does not exist")
    if model.ByteSize() > 2**31 - 1:
        raise ModelError("the augmented model is over 2 GiB; saving with external data is not supported yet")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model.SerializeToString())
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from its other users
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
