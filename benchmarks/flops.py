"""FLOPs per image of an ONNX graph, from its inferred shapes: the floor that the augmented model's time is held to.

Counting, per node (batch fixed to 1, every other symbolic input dimension too):
- Conv: 2 * output elements * (C_in / group) * kernel area; ConvTranspose: 2 * input elements * (C_out / group) *
  kernel area; Gemm: 2 * M * N * K; MatMul: 2 * output elements * K. Biases are not counted.
- MaxPool, AveragePool: output elements * kernel area (one compare or add per window element).
- Global pools, Reduce*, ArgMax/ArgMin, TopK: input elements (each enters one reduction).
- Ops that only move, view or index data (ZERO_FLOP_OPS): 0.
- Every other op (elementwise arithmetic, comparisons, Where, Resize, Softmax, ...): output elements.
The generated ops of an augmented model are its nodes whose outputs the plain graph does not produce.
A node whose shapes inference could not resolve counts 0 and is listed in `unresolved`, so no gap is silent.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import helper

ZERO_FLOP_OPS = {
    "Cast", "Concat", "Constant", "ConstantOfShape", "Dropout", "Expand", "Flatten", "Gather", "GatherElements",
    "GatherND", "Identity", "Pad", "Reshape", "Scatter", "ScatterElements", "ScatterND", "Shape", "Size", "Slice",
    "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze",
}
WINDOWED_POOLS = {"MaxPool", "AveragePool", "LpPool"}
INPUT_REDUCTIONS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ArgMax", "ArgMin", "TopK",
                    "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"}

# Float initializers above this size are declared as inputs for shape inference: it needs their shapes, not values.
LARGE_INITIALIZER_ELEMENTS = 4096


@dataclass
class FlopCount:
    total: int = 0
    by_op: Counter = field(default_factory=Counter)
    unresolved: list[str] = field(default_factory=list)  # names of nodes counted as 0 for want of shapes


def per_image_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every tensor's static shape with the batch (and any other symbolic input dimension) set to 1."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    declared = {value.name for value in graph.input}
    kept = []
    for tensor in graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and math.prod(tensor.dims) > LARGE_INITIALIZER_ELEMENTS:
            if tensor.name not in declared:
                graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            kept.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    light = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)

    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    shapes.update({t.name: tuple(t.dims) for t in kept})
    return shapes


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """FLOPs of one node by the rules of the module docstring; None where a needed shape is unknown."""
    op = node.op_type
    if op in ZERO_FLOP_OPS:
        return 0
    needed = [node.input[0], node.output[0]] if node.input else [node.output[0]]
    if op in ("Conv", "ConvTranspose"):
        needed.append(node.input[1])
    if op in ("Gemm", "MatMul"):
        needed = [node.input[0], node.output[0]]
    if any(name not in shapes for name in needed):
        return None
    out = shapes[node.output[0]]
    if op == "Conv":
        weight = shapes[node.input[1]]
        return 2 * math.prod(out) * weight[1] * math.prod(weight[2:])
    if op == "ConvTranspose":
        weight = shapes[node.input[1]]
        return 2 * math.prod(shapes[node.input[0]]) * weight[1] * math.prod(weight[2:])
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        a = shapes[node.input[0]]
        return 2 * math.prod(out) * (a[0] if trans_a else a[1])
    if op == "MatMul":
        return 2 * math.prod(out) * shapes[node.input[0]][-1]
    if op in WINDOWED_POOLS:
        kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
        return math.prod(out) * math.prod(kernel)
    if op in INPUT_REDUCTIONS:
        return math.prod(shapes[node.input[0]])
    return math.prod(out)


def count(nodes, shapes: dict[str, tuple[int, ...]]) -> FlopCount:
    result = FlopCount()
    for node in nodes:
        flops = node_flops(node, shapes)
        if flops is None:
            result.unresolved.append(node.name or node.output[0])
            continue
        result.total += flops
        result.by_op[node.op_type] += flops
    return result


def forward_and_generated(plain: onnx.ModelProto, augmented: onnx.ModelProto) -> tuple[FlopCount, FlopCount]:
    """Per-image FLOPs of the plain model's forward pass and of the ops that augmentation added."""
    forward = count(plain.graph.node, per_image_shapes(plain))
    produced = {name for node in plain.graph.node for name in node.output}
    generated = [node for node in augmented.graph.node if not set(node.output) <= produced]
    return forward, count(generated, per_image_shapes(augmented))

