"""Stage 6: join the generated nodes to the untouched original graph, declare the contract's interface, check, save."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .builder import Builder
from .errors import InternalError, ModelError, RcamError


LAYERS_METADATA = "rcam/layers"
SCOPES_METADATA = "rcam/layer_scopes"


def record_layers(model: onnx.ModelProto, layers: dict[str, str], scopes: dict[str, str]) -> None:
    """Write which tensor each layer key L explains (`auto`'s choice among them) into the model's metadata, as a
    JSON object under rcam/layers (docs/design.md section 2), and the torch module path of each where the exporter
    recorded one, under rcam/layer_scopes (pictures are titled with it)."""
    for entry in [e for e in model.metadata_props if e.key in (LAYERS_METADATA, SCOPES_METADATA)]:
        model.metadata_props.remove(entry)
    model.metadata_props.add(key=LAYERS_METADATA, value=json.dumps(layers))
    model.metadata_props.add(key=SCOPES_METADATA, value=json.dumps({k: v for k, v in scopes.items() if v}))


def recorded_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Layer key -> module path, as record_layers wrote them (none for a model augmented before it did)."""
    found = [e.value for e in model.metadata_props if e.key == SCOPES_METADATA]
    return json.loads(found[0]) if found else {}


def assemble(original: onnx.ModelProto, b: Builder) -> onnx.ModelProto:
    """The original model plus the generated nodes, inputs and outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(original)
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    available |= {o for n in graph.node for o in n.output} | {i.name for i in b.initializers} | b.inputs_by_name
    graph.node.extend(b.toposorted(available))
    graph.initializer.extend(b.initializers)
    graph.input.extend(b.inputs)
    for name, elem_type, shape in b.outputs:
        graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InternalError(f"internal error: the augmented model fails onnx.checker: {exc}") from None
    return model


VERIFY_BATCH = 2  # a dynamic batch axis is run at 2: per-sample and batched reshapes then both show


def verify_runs(model: onnx.ModelProto, added_outputs, original: onnx.ModelProto) -> float:
    """Run `model` once in onnxruntime's CPU provider on a synthetic batch; every added float output must be finite.
    Returns the largest difference of the original outputs from `original`'s on the same batch: 0 where they are
    bit for bit the same, as they are unless onnxruntime rounds differently once other nodes read the activations
    (fp16 models on the CPU, whose chains of fp16 ops it computes in fp32; INT8 models, whose Q/DQ node units it
    fuses into integer kernels only where nothing else reads their tensors).

    Checkers pass graphs that onnxruntime cannot run (a reshape to a size the data does not have), so nothing is
    called done before it ran. Failures are onnx-rcam's bugs: InternalError, with onnxruntime's words and the node.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4
    defaults = {i.name for i in model.graph.initializer}
    feeds = {i.name: _synthetic(i) for i in model.graph.input if i.name not in defaults}
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise InternalError(f"internal error: the augmented model does not run in onnxruntime (CPU, synthetic batch "
                            f"of {VERIFY_BATCH}): {_with_node(model, str(exc))}\nNothing was written. Please report "
                            f"this with the model; --no-verify (verify=False) skips this check.") from None
    for name, _, _ in added_outputs:
        value = values[name]
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise InternalError(f"internal error: the augmented model's output {name!r} holds NaN or Inf on a "
                                f"synthetic batch. Nothing was written. Please report this with the model; "
                                f"--no-verify (verify=False) skips this check.")
    plain = ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in plain.get_outputs()],
                        plain.run(None, {i.name: feeds[i.name] for i in plain.get_inputs()})))
    return max((float(np.max(np.abs(values[name].astype(np.float64) - value.astype(np.float64))))
                for name, value in expected.items() if value.dtype.kind == "f" and value.size), default=0.0)


def drift_note(drift: float) -> str:
    """What a user should know when the original outputs moved (verify_runs), or "" when they did not."""
    if not drift:
        return ""
    return (f"note: on onnxruntime's CPU provider the augmented model's original outputs differ from the plain "
            f"model's by up to {drift:.3g} on a synthetic batch. onnxruntime rounds this model's forward pass "
            f"differently once the explanation reads its activations (fp16 models: it computes chains of fp16 ops in "
            f"fp32; INT8 models: it fuses quantized node units only where nothing else reads them), as it does "
            f"between its own optimization levels. Take predictions from the plain model where the last bits "
            f"matter; the maps explain the forward pass the augmented model computes.")


def _synthetic(value_info: onnx.ValueInfoProto) -> np.ndarray:
    """Uniform [0, 1) values (zeros for integers) shaped like the input; the first dynamic dimension is the batch."""
    tensor_type = value_info.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (VERIFY_BATCH if i == 0 else 1)
             for i, d in enumerate(tensor_type.shape.dim)]
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).random(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _with_node(model: onnx.ModelProto, message: str) -> str:
    """onnxruntime's message, and the op and inputs of the node it names."""
    match = re.search(r"node\.? Name:'([^']*)'", message)
    nodes = {n.name: n for n in model.graph.node}
    node = nodes.get(match.group(1)) if match else None
    where = f" [node {node.name!r}: {node.op_type}({', '.join(node.input)})]" if node is not None else ""
    return message.strip() + where


def save(model: onnx.ModelProto, path: str | os.PathLike, force: bool = False) -> Path:
    """Write atomically: a temporary file in the same folder, renamed into place only once complete."""
    path = Path(path)
    if path.exists() and not force:
        raise RcamError(f"{path} exists; pass --force (force=True) to overwrite it")
    if not path.parent.exists():
        raise RcamError(f"cannot write {path}: folder {path.parent} does not exist")
    if model.ByteSize() > 2**31 - 1:
        raise ModelError("the augmented model is over 2 GiB; saving with external data is not supported yet")
    # Created with mode 0666, which the process's umask narrows as for any file it writes (mkstemp's 0600 would
    # hide the model from its other users; reading the umask would mean setting it, process-wide).
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model.SerializeToString())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
