"""Stage 2: bring the graph into one normal form, so that no later stage deals with exporter quirks.

The result is an *analysis* graph. The augmented model keeps the original forward graph bit for bit; the generated
nodes only read tensors that exist in it under the same names. Every rewrite here therefore preserves the names and
values of the activations it keeps: a folded Conv takes over the output name of the BatchNormalization it absorbs,
and a dropped Identity's readers read its input.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import ModelError

PASS_THROUGH = ("Identity", "Dropout")
OUTPUT_NORMALIZERS = ("Softmax", "LogSoftmax")


@dataclass
class Canonical:
    graph: gs.Graph
    image: gs.Variable   # the image input (4-D)
    logits: gs.Variable  # [N, K] class scores before any final Softmax
    scopes: dict[str, str]  # tensor name -> torch module path that produced it, where the exporter recorded one


def canonicalize(model: onnx.ModelProto) -> Canonical:
    scopes = {out: path for node in model.graph.node if (path := module_path(node)) for out in node.output}
    graph = gs.import_onnx(model)
    graph.toposort()
    graph.fold_constants(error_ok=True)
    graph.cleanup()
    _drop_pass_through(graph)
    _fold_batchnorm(graph)
    _fold_zero_pad(graph)
    graph.cleanup().toposort()
    return Canonical(graph, _find_image(graph), _find_logits(graph), scopes)


def module_path(node: onnx.NodeProto) -> str:
    """The torch module path of a node: the dynamo exporter records it in metadata, TorchScript in the name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            # ['', 'layer2', 'layer2.3', 'layer2.3.relu3', 'relu_21']: the root, the module paths, the fx node.
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return names[-2] if isinstance(names, list) and len(names) >= 2 else ""
    if not node.name.startswith("/"):
        return ""
    # TorchScript writes /layer1/layer1.0/conv1/Conv: each segment is either a full path or a child attribute.
    path = ""
    for segment in node.name.strip("/").split("/")[:-1]:
        path = segment if (not path or segment.startswith(path + ".")) else f"{path}.{segment}"
    return path


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def is_activation(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Variable)


def _drop_pass_through(graph: gs.Graph) -> None:
    for node in [n for n in graph.nodes if n.op in PASS_THROUGH]:
        source, result = node.inputs[0], node.outputs[0]
        if result in graph.outputs:
            graph.outputs[graph.outputs.index(result)] = source
        for reader in list(result.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is result:
                    reader.inputs[i] = source
        node.outputs.clear()


def _fold_batchnorm(graph: gs.Graph) -> None:
    """Conv/Gemm -> BatchNormalization becomes one linear layer carrying the BN's output name."""
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        linear_out = bn.inputs[0]
        if len(linear_out.inputs) != 1 or len(linear_out.outputs) != 1 or linear_out in graph.outputs:
            continue
        linear = linear_out.inputs[0]
        params = [constant_value(t) for t in bn.inputs[1:5]]
        if linear.op not in ("Conv", "Gemm") or any(p is None for p in params) or len(bn.outputs) != 1:
            continue
        weight = constant_value(linear.inputs[1])
        if weight is None:
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        factor = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        bias = constant_value(linear.inputs[2]) if len(linear.inputs) > 2 else None
        bias = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
        if linear.op == "Conv":
            folded_weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
        else:  # Gemm: fold into the output-feature axis of B
            alpha = linear.attrs.get("alpha", 1.0)
            out_axis = 0 if linear.attrs.get("transB", 0) else 1
            folded_weight = weight * np.expand_dims(factor, 1 - out_axis) * alpha
            bias = bias * linear.attrs.get("beta", 1.0)
            linear.attrs["alpha"], linear.attrs["beta"] = 1.0, 1.0
        folded_bias = (bias - mean) * factor + beta
        name = linear.name or linear.outputs[0].name
        # onnx-graphsurgeon's node lists keep tensors' producer/reader links in sync only through these methods.
        while len(linear.inputs) > 1:
            linear.inputs.pop()
        linear.inputs.extend([gs.Constant(f"rcam/folded/{name}/weight", folded_weight.astype(np.float32)),
                              gs.Constant(f"rcam/folded/{name}/bias", folded_bias.astype(np.float32))])
        result = bn.outputs[0]
        bn.outputs.clear()
        linear.outputs.clear()
        linear.outputs.append(result)


def _fold_zero_pad(graph: gs.Graph) -> None:
    """A zero Pad of the spatial axes read only by Convs becomes the Convs' own padding (TF "same" exports).

    Besides a smaller backward graph, this keeps the generated nodes from reading the Pad's output, which would stop
    onnxruntime from fusing the Pad into the Conv and change the forward pass's rounding.
    """
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        padded = pad.outputs[0]
        readers = list(padded.outputs)
        amounts = constant_value(pad.inputs[1]) if len(pad.inputs) > 1 else None
        fill = constant_value(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2].name else np.zeros(1)
        mode = pad.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        has_axes = len(pad.inputs) > 3 and pad.inputs[3].name
        if (mode != "constant" or amounts is None or fill is None or np.any(fill != 0) or has_axes
                or padded in graph.outputs or not readers or len(amounts) != 8
                or any(n.op != "Conv" or n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
                       or n.inputs[0] is not padded for n in readers)):
            continue
        begins, ends = [int(a) for a in amounts[:4]], [int(a) for a in amounts[4:]]
        if begins[:2] != [0, 0] or ends[:2] != [0, 0] or min(begins + ends) < 0:
            continue
        for conv in readers:
            own = list(conv.attrs.get("pads", [0] * 4))
            conv.attrs["pads"] = [own[0] + begins[2], own[1] + begins[3], own[2] + ends[2], own[3] + ends[3]]
            conv.inputs[0] = pad.inputs[0]
        pad.outputs.clear()


def _find_image(graph: gs.Graph) -> gs.Variable:
    images = [t for t in graph.inputs if t.shape is not None and len(t.shape) == 4]
    if len(images) != 1:
        found = ", ".join(f"{t.name} {t.shape}" for t in graph.inputs) or "none"
        raise ModelError(f"expected exactly one 4-D image input, found: {found}")
    image = images[0]
    if not all(isinstance(d, int) for d in image.shape[1:]):
        raise ModelError(
            f"input {image.name!r} has shape {image.shape}: channels, height and width must be fixed numbers")
    return image


def _find_logits(graph: gs.Graph) -> gs.Variable:
    if not graph.outputs:
        raise ModelError("the model has no outputs")
    scores = graph.outputs[0]
    while scores.inputs and scores.inputs[0].op in OUTPUT_NORMALIZERS:
        normalizer = scores.inputs[0]
        axis = normalizer.attrs.get("axis", -1)
        if axis not in (-1, len(scores.shape or [0, 0]) - 1):
            break
        scores = normalizer.inputs[0]
    if scores.shape is None or len(scores.shape) != 2 or not isinstance(scores.shape[1], int):
        raise ModelError(
            f"output {graph.outputs[0].name!r}: expected class scores of shape [N, K] (optionally after a final "
            f"Softmax/LogSoftmax), got shape {scores.shape}")
    if not scores.inputs:
        raise ModelError(f"output {scores.name!r} is not computed from the input")
    return scores
