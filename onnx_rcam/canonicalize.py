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

from .deployed import standardize
from .errors import ModelError
from .patterns import fold_spelled_out_normalizations

PASS_THROUGH = ("Identity", "Dropout")
OUTPUT_NORMALIZERS = ("Softmax", "LogSoftmax")


# Ops whose inputs and outputs are laid out [N, C, H, W]: the first one the image reaches tells its layout.
CHANNEL_FIRST_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                     "BatchNormalization", "LRN", "InstanceNormalization")
TO_CHANNEL_FIRST = [0, 3, 1, 2]
TO_CHANNEL_LAST = [0, 2, 3, 1]


@dataclass
class Canonical:
    graph: gs.Graph
    image: gs.Variable   # the image input (4-D)
    logits: gs.Variable  # the explained scores: [N, K] class scores before any final Softmax, or any [N, ...]
    #                      output that --scores names (a detector's boxes and scores, a segmenter's masks)
    scopes: dict[str, str]  # tensor name -> torch module path that produced it, where the exporter recorded one
    layout: str = "NCHW"  # the image's: "NHWC" for TensorFlow graphs, which Transpose it first
    probed: dict | None = None  # shapes_at_fixed_batch: None on axis 0 where it is not the batch

    @property
    def classifier(self) -> bool:
        """Whether the explained scores are [N, K] class scores (explained per class: rcam/target, rcam/class, the
        initial relevance kinds); any other scores are explained by the seed alone."""
        return len(self.logits.shape) == 2

    @property
    def image_size(self) -> tuple[int, int]:
        shape = self.image.shape
        return (shape[1], shape[2]) if self.layout == "NHWC" else (shape[2], shape[3])


def canonicalize(model: onnx.ModelProto, scores: str | None = None) -> Canonical:
    """scores: the name of the output to explain; default: the first output, which must be class scores."""
    names = [o.name for o in model.graph.output]
    if scores is not None and scores not in names:
        raise ModelError(f"the model has no output {scores!r}; its outputs: {', '.join(map(repr, names))}")
    explained = names.index(scores) if scores is not None else 0
    scopes = {out: path for node in model.graph.node if (path := module_path(node)) for out in node.output}
    graph = gs.import_onnx(model)
    graph.toposort()
    standardize(graph)
    for node in graph.nodes:  # the ops deployed.py unfused keep the fused node's name, and so its module path
        unscoped = [t.name for t in node.outputs if t.name not in scopes]
        if unscoped and (path := path_from_node_name(node.name)):
            scopes.update(dict.fromkeys(unscoped, path))
    graph.fold_constants(error_ok=True)
    graph.cleanup()
    if _refine_shapes(graph):  # shapes now known fold further: a Shape of a static tensor (attention's 1/sqrt d)
        graph.fold_constants(error_ok=True)
        graph.cleanup()
    fold_spelled_out_normalizations(graph)
    _gemm_of_activations_as_matmul(graph)
    _drop_pass_through(graph)
    _fold_channel_affine(graph)
    _fold_zero_pad(graph)
    graph.cleanup().toposort()
    logits = _find_logits(graph, explained, scores)  # may append a Flatten, after all it reads (cleanup drops it)
    image = _find_image(graph)
    probed = shapes_at_fixed_batch(graph, image)
    _refine_per_image_shapes(graph, probed)
    if not all(isinstance(d, int) for d in logits.shape[1:]):
        raise ModelError(f"scores {logits.name!r} have shape {logits.shape}: expected [N, ...] with every axis "
                         f"after the batch a fixed number (give --input-shape for a dynamic image size)")
    return Canonical(graph, image, logits, scopes, _image_layout(image), probed)


def _refine_per_image_shapes(graph: gs.Graph, probed: dict[str, tuple] | None) -> None:
    """Axes after the batch that stayed symbolic (TorchScript names a detector's concatenated anchors, or a
    flattened token count, anew) take the sizes found at a fixed batch, in the tensors whose axis 0 is the batch:
    those sizes are the same for every batch."""
    for tensor in graph.tensors().values():
        found = (probed or {}).get(tensor.name)
        if not isinstance(tensor, gs.Variable) or tensor.shape is None or found is None or \
                len(found) != len(tensor.shape) or not found or found[0] is None and len(found) > 1:
            continue
        tensor.shape = [tensor.shape[0], *(d if isinstance(d, int) or f is None else f
                                           for d, f in zip(tensor.shape[1:], found[1:]))]


PROBE_BATCH = 7  # a prime: a tensor of attention windows or heads holds a multiple of it on axis 0


def shapes_at_fixed_batch(graph: gs.Graph, image: gs.Variable) -> dict[str, tuple] | None:
    """Each tensor's shape with the batch fixed, its axis 0 replaced by None where that is not the batch; None where
    shape inference fails.

    At a fixed batch (PROBE_BATCH where it is dynamic) the Reshapes whose shapes are computed from Shape fold, so
    that a Swin's windows [N * windows, window * window, D] differ from its tokens [N, h * w, D] (symbolic names
    cannot tell them apart: TorchScript names each Reshape's axis 0 anew), and flattened token counts become known.
    """
    batch = image.shape[0] if image.shape else None
    probe = batch if isinstance(batch, int) else PROBE_BATCH
    graph = graph.copy()
    graph.tensors()[image.name].shape = [probe, *image.shape[1:]]
    try:
        graph.fold_constants(error_ok=True)
        model = gs.export_onnx(graph)
        del model.graph.value_info[:]
        for output in model.graph.output:
            output.type.tensor_type.ClearField("shape")
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - without the probe, shapes are as canonicalize knows them
        return None
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
            shapes[info.name] = tuple([None if not dims or dims[0] != probe else batch, *dims[1:]])
    return shapes



def _refine_shapes(graph: gs.Graph) -> bool:
    """Infer shapes again on the folded graph and take every dimension that became a number; whether any did.

    TorchScript writes chunk() as Slices whose ends are computed from Shape through Div, which ONNX's data
    propagation does not follow: every shape after them is unknown until folding has made those ends constants.
    Dimensions that stay symbolic keep their old names (a fresh inference would rename the batch dimension).
    """
    if all(_is_static(t.shape) for t in graph.tensors().values() if isinstance(t, gs.Variable)):
        return False
    try:
        inferred = onnx.shape_inference.infer_shapes(gs.export_onnx(graph), data_prop=True)
    except Exception:  # noqa: BLE001 - refinement is a bonus; the shapes from before folding stay usable
        return False
    found = {info.name: info.type.tensor_type for info in inferred.graph.value_info}
    changed = False
    for tensor in graph.tensors().values():
        info = found.get(tensor.name)
        if not isinstance(tensor, gs.Variable) or info is None or not info.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in info.shape.dim]
        if tensor.shape is None:  # a new tensor (deployed.py's) or one behind an op inference did not know
            tensor.shape = [d if d is not None else (named.dim_param or f"rcam_unknown_{i}")
                            for i, (d, named) in enumerate(zip(dims, info.shape.dim))]
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type)
            changed = True
        elif len(tensor.shape) == len(dims):
            refined = [new if new is not None and not isinstance(old, int) else old
                       for old, new in zip(tensor.shape, dims)]
            changed = changed or refined != list(tensor.shape)
            tensor.shape = refined
    return changed


def _is_static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape[1:])


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
    return path_from_node_name(node.name)


def path_from_node_name(name: str) -> str:
    """The torch module path in a TorchScript node name ("" for any other name)."""
    if not name.startswith("/"):
        return ""
    # TorchScript writes /features/features.1/conv/conv.0/Conv: a Sequential's child is named after the previous
    # segment ("conv.0" is child 0 of "conv"), any other module by its attribute name.
    path, previous = "", ""
    for segment in name.strip("/").split("/")[:-1]:
        child = segment[len(previous) + 1:] if previous and segment.startswith(previous + ".") else segment
        path = f"{path}.{child}" if path else child
        previous = segment
    return path


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def is_activation(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Variable)


def _gemm_of_activations_as_matmul(graph: gs.Graph) -> None:
    """A Gemm whose B is computed at run time becomes what it computes, alpha * A' B' + beta * C, in MatMul,
    Transpose, Mul and Add, so that the products of activations (attention, or any product under the gradient rule)
    take it. Its output keeps its name; the steps before it are tensors of the analysis graph only."""
    for node in [n for n in graph.nodes if n.op == "Gemm" and not isinstance(n.inputs[1], gs.Constant)]:
        a, b, *c = node.inputs
        y = node.outputs[0]
        steps: list[gs.Node] = []

        def step(op, inputs, **attrs):
            shape = y.shape if op != "Transpose" or inputs[0].shape is None else list(reversed(inputs[0].shape))
            out = gs.Variable(f"rcam/gemm/{y.name}/{len(steps)}", dtype=y.dtype, shape=shape)
            steps.append(gs.Node(op, f"{node.name}/rcam_{op}_{len(steps)}", attrs, inputs, [out]))
            return out

        a = step("Transpose", [a], perm=[1, 0]) if node.attrs.get("transA", 0) else a
        b = step("Transpose", [b], perm=[1, 0]) if node.attrs.get("transB", 0) else b
        product = step("MatMul", [a, b])
        dtype = np.dtype(y.dtype or np.float32)
        alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
        if alpha != 1.0:
            product = step("Mul", [product, gs.Constant(f"rcam/gemm/{y.name}/alpha", np.array(alpha, dtype))])
        if c and c[0].name:
            term = c[0]
            if isinstance(term, gs.Constant):
                term = gs.Constant(f"rcam/gemm/{y.name}/c", (term.values * beta).astype(dtype))
            elif beta != 1.0:
                term = step("Mul", [term, gs.Constant(f"rcam/gemm/{y.name}/beta", np.array(beta, dtype))])
            product = step("Add", [product, term])
        steps[-1].outputs = [y]
        node.outputs.clear()
        graph.nodes.extend(steps)
    graph.cleanup().toposort()


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


def _fold_channel_affine(graph: gs.Graph) -> None:
    """Conv/Gemm/MatMul followed by a per-output-channel affine map becomes one linear layer carrying the map's
    output name: BatchNormalization, and Mul/Div/Add/Sub by constants (BatchNormalization written out, as
    converters do, and the bias Add of a MatMul head, which becomes a Gemm). Repeated until nothing folds.
    """
    folded = True
    while folded:
        folded = False
        for node in list(graph.nodes):
            affine = _channel_affine(node)
            if affine is not None and _fold_into_linear(graph, node, *affine):
                folded = True


def _channel_affine(node: gs.Node):
    """(input, scale, shift) when `node` computes input * scale + shift per channel (axis 1) with constant scale
    and shift (numpy arrays broadcastable to [C], or None); otherwise None."""
    if node.op == "BatchNormalization":
        params = [constant_value(t) for t in node.inputs[1:5]]
        if len(node.outputs) != 1 or any(p is None for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        return node.inputs[0], scale, beta - mean * scale
    if node.op not in ("Mul", "Div", "Add", "Sub") or len(node.inputs) != 2:
        return None
    x, other = node.inputs
    if node.op in ("Mul", "Add") and constant_value(x) is not None:
        x, other = other, x
    value = constant_value(other)
    if value is None or not is_activation(x) or x.shape is None or len(x.shape) < 2:
        return None  # no channel axis
    vector = _channel_vector(value.astype(np.float64), len(x.shape))
    if vector is None:
        return None
    if node.op == "Div":
        return (x, 1.0 / vector, None) if np.all(vector) else None
    return {"Mul": (x, vector, None), "Add": (x, None, vector), "Sub": (x, None, -vector)}[node.op]


def _channel_vector(value: np.ndarray, rank: int) -> np.ndarray | None:
    """`value` as a [C] or [1] vector if it broadcasts against a rank-`rank` tensor along axis 1 only."""
    if value.ndim > rank or (value.ndim == rank and value.shape[0] != 1):
        return None
    trailing = value.reshape(value.shape[-(rank - 1):] if value.ndim >= rank - 1 else
                             (1,) * (rank - 1 - value.ndim) + value.shape)
    if any(d != 1 for d in trailing.shape[1:]):
        return None
    return trailing.reshape(-1)


def _fold_into_linear(graph: gs.Graph, affine: gs.Node, x: gs.Variable, scale, shift) -> bool:
    if len(x.inputs) != 1 or len(x.outputs) != 1 or x in graph.outputs or len(affine.outputs) != 1:
        return False
    linear = x.inputs[0]
    weight = constant_value(linear.inputs[1]) if len(linear.inputs) > 1 else None
    if weight is None or linear.op not in ("Conv", "Gemm", "MatMul") or not is_activation(linear.inputs[0]):
        return False
    if len(linear.inputs) > 2 and linear.inputs[2].name and constant_value(linear.inputs[2]) is None:
        return False  # a computed bias
    if linear.op == "MatMul" and (weight.ndim != 2 or linear.inputs[0].shape is None
                                  or len(linear.inputs[0].shape) != 2):
        return False  # only the 2-D [N, C] x [C, K] form is a Gemm
    if linear.op == "Gemm" and linear.attrs.get("transA", 0):
        return False
    channels = weight.shape[0] if linear.op == "Conv" else weight.shape[0 if linear.attrs.get("transB", 0) else 1]
    if any(v is not None and v.size not in (1, channels) for v in (scale, shift)):
        return False
    if linear.op == "MatMul":
        linear.op, linear.attrs = "Gemm", {}
    scale = np.ones(channels) if scale is None else np.broadcast_to(scale, channels)
    shift = np.zeros(channels) if shift is None else np.broadcast_to(shift, channels)
    weight_dtype = weight.dtype
    weight = weight.astype(np.float64)
    bias = constant_value(linear.inputs[2]) if len(linear.inputs) > 2 else None
    bias = np.zeros(channels) if bias is None else np.broadcast_to(bias.astype(np.float64), channels)
    if linear.op == "Conv":
        folded_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    else:  # Gemm: scale the output-feature axis of B, and take alpha and beta in
        out_axis = 0 if linear.attrs.get("transB", 0) else 1
        folded_weight = weight * np.expand_dims(scale, 1 - out_axis) * linear.attrs.get("alpha", 1.0)
        bias = bias * linear.attrs.get("beta", 1.0)
        linear.attrs["alpha"], linear.attrs["beta"] = 1.0, 1.0
    folded_bias = bias * scale + shift
    result = affine.outputs[0]  # a unique name, also when the same layer folds several maps in turn
    # onnx-graphsurgeon's node lists keep tensors' producer/reader links in sync only through these methods.
    while len(linear.inputs) > 1:
        linear.inputs.pop()
    # In the model's own type: a forward copy of the folded layer computes as the model does.
    linear.inputs.extend([gs.Constant(f"rcam/folded/{result.name}/weight", folded_weight.astype(weight_dtype)),
                          gs.Constant(f"rcam/folded/{result.name}/bias", folded_bias.astype(weight_dtype))])
    affine.outputs.clear()
    linear.outputs.clear()
    linear.outputs.append(result)
    return True


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
    images = [t for t in graph.inputs if isinstance(t, gs.Variable) and t.shape is not None and len(t.shape) == 4]
    if len(images) != 1:
        found = ", ".join(f"{t.name} {t.shape}" for t in graph.inputs) or "none"
        raise ModelError(f"expected exactly one 4-D image input, found: {found}")
    image = images[0]
    if not all(isinstance(d, int) for d in image.shape[1:]):
        raise ModelError(
            f"input {image.name!r} has shape {image.shape}: channels, height and width must be fixed numbers. "
            f"Give the shape to explain at: --input-shape (input_shape= in Python), e.g. "
            f"--input-shape N,3,224,224; N keeps the batch dynamic")
    return image


def _image_layout(image: gs.Variable) -> str:
    """NHWC if the first layout-defining op the image reaches is a Transpose to [N, C, H, W] (how TensorFlow
    converters start a graph); NCHW otherwise, and where it is a Transpose to [N, H, W, C] (ConvNeXt's LayerNorm)."""
    seen, frontier = set(), [image]
    while frontier:
        tensor = frontier.pop(0)
        for reader in tensor.outputs:
            perm = list(reader.attrs.get("perm", [])) if reader.op == "Transpose" else None
            if perm == TO_CHANNEL_FIRST:
                return "NHWC"
            if reader.op in CHANNEL_FIRST_OPS or perm == TO_CHANNEL_LAST:  # moved to channels-last: it was first
                return "NCHW"
            for out in reader.outputs:
                if out.name not in seen and out.shape is not None and len(out.shape) == 4:
                    seen.add(out.name)
                    frontier.append(out)
    return "NCHW"


def _find_logits(graph: gs.Graph, index: int = 0, name: str | None = None) -> gs.Variable:
    """The class scores before any final Softmax/LogSoftmax. Scores that stay 4-D ([N, K, 1, 1], as from a conv
    head) get a Flatten in the analysis graph; the generated nodes compute it again from the original tensor.
    An output `name` that is not class scores ([N, A, 5 + C] detections, [N, C, H, W] masks) is explained as it
    is, by the seed."""
    if not graph.outputs:
        raise ModelError("the model has no outputs")
    output = graph.outputs[index]  # (a dropped Identity may have renamed it)
    if name is not None and not _is_class_scores(output):
        if output.shape is None or len(output.shape) < 2:
            raise ModelError(f"scores {name!r} have shape {output.shape}: expected [N, ...]")
        # Scores normalised at the end (a segmenter's softmax over its classes) are explained at their logits, as
        # class scores are: LRP holds a Softmax inside the network constant.
        while output.inputs and output.inputs[0].op in OUTPUT_NORMALIZERS and output.inputs[0].inputs[0].inputs:
            output = output.inputs[0].inputs[0]
        if not output.inputs:
            raise ModelError(f"output {name!r} is not computed from the input")
        return output
    scores = _before_normalizers(output)
    shape = scores.shape
    if shape is not None and len(shape) > 2 and all(d == 1 for d in shape[2:]) and isinstance(shape[1], int):
        flat = gs.Variable(f"rcam/flat_scores/{scores.name}", dtype=scores.dtype, shape=[shape[0], shape[1]])
        graph.nodes.append(gs.Node("Flatten", f"rcam/flatten/{scores.name}", {"axis": 1}, [scores], [flat]))
        scores = flat
    if scores.shape is None or len(scores.shape) != 2 or not isinstance(scores.shape[1], int):
        others = ", ".join(f"{t.name} {t.shape}" for t in graph.outputs)
        raise ModelError(
            f"output {output.name!r}: expected class scores of shape [N, K] or [N, K, 1, 1] (optionally after a "
            f"final Softmax/LogSoftmax), got shape {scores.shape}. To explain another output (a detector's or a "
            f"segmenter's), name it with --scores (scores= in Python) and feed rcam/seed. Outputs: {others}")
    if not scores.inputs:
        raise ModelError(f"output {scores.name!r} is not computed from the input")
    return scores


def _is_class_scores(tensor: gs.Variable) -> bool:
    """[N, K] or [N, K, 1, 1]: scores with one value per class and sample."""
    shape = tensor.shape
    return shape is not None and len(shape) >= 2 and isinstance(shape[1], int) and all(d == 1 for d in shape[2:])


def _before_normalizers(output: gs.Variable) -> gs.Variable:
    """The tensor before the final Softmax/LogSoftmax over the classes, if any, else `output`.

    Class scores may be reshaped or transposed around the normaliser: a Softmax of opset < 13 flattens
    [N, K, 1, 1] from axis 1, which onnx's version converter writes as Flatten -> Softmax -> Reshape(Shape(scores)),
    and TorchScript at opset 9 writes softmax(dim=1) of [N, K, 1, 1] as Transpose -> Softmax(axis=3) -> Transpose.
    These are crossed only on the way to a normaliser, so that scores without one stay the tensor the model outputs.
    """
    scores, tensor = output, output
    while tensor.inputs and (producer := tensor.inputs[0]).op in CLASS_RESHAPES + OUTPUT_NORMALIZERS:
        source = producer.inputs[0]
        axis, source_axis = _class_axis_of(tensor), _class_axis_of(source)
        if axis is None or source_axis is None or tensor.shape[axis] != source.shape[source_axis]:
            break
        if producer.op == "Transpose" and list(producer.attrs.get("perm", [-1]))[:1] != [0]:
            break  # the batch axis moved
        if producer.op in OUTPUT_NORMALIZERS:
            if producer.attrs.get("axis", -1) % len(tensor.shape) != axis:
                break
            scores = source
        tensor = source
    # Scores laid out [N, 1, .., K] before the normaliser: the tensor they were moved from, classes on axis 1.
    while scores is not output and _class_axis_of(scores) != 1 and scores.inputs and \
            scores.inputs[0].op in CLASS_RESHAPES and _class_axis_of(scores.inputs[0].inputs[0]) is not None:
        scores = scores.inputs[0].inputs[0]
    return scores


# Ops that may only move class scores between the logits and a final normaliser.
CLASS_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def _class_axis_of(tensor: gs.Tensor) -> int | None:
    """The axis of the classes in a [N, 1.., K, 1..] tensor of scores (one per class and sample); None otherwise."""
    shape = tensor.shape
    if not isinstance(tensor, gs.Variable) or shape is None or len(shape) < 2:
        return None
    if not all(isinstance(d, int) for d in shape[1:]):
        return None
    wide = [axis for axis in range(1, len(shape)) if shape[axis] != 1]
    return wide[0] if len(wide) == 1 else None


def _class_axis(shape) -> int:
    """Axis 1 holds the classes of [N, K] and of [N, K, 1, 1]; a Softmax over any other axis is part of the model."""
    return 1 if len(shape) == 2 or all(d == 1 for d in shape[2:]) else -1
