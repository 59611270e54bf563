"""Deployed forms into standard ops, for the analysis only: the model itself is never rewritten.

- onnxruntime's fused contrib ops (`com.microsoft` FusedConv, FusedGemm, FusedMatMul, QuickGelu and the Gelu
  family: what a graph saved at ORT_ENABLE_EXTENDED holds) become the standard ops they fuse, e.g. Conv -> (Add)
  -> Relu, or x * sigmoid(x). The generated nodes compute any of their intermediate tensors again where they need
  one (forward_copies.py). Any other op outside the standard domain stops with its name.
- DequantizeLinear of a constant (an INT8 model's weights and biases) becomes the float constant it computes.
- Forms that carry no float activations to explain stop with a message that says what to give instead: QOperator
  models (QLinearConv, ...) and the NCHWc layout ops of ORT_ENABLE_ALL.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .errors import ModelError

CONTRIB = "com.microsoft"
# Integer-arithmetic ops of the QOperator format: activations are integers from one end of the network to the other.
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul",
                 "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu",
                 "QLinearSigmoid", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearReshape",
                 "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def standardize(graph: gs.Graph) -> None:
    for node in list(graph.nodes):
        domain = node.domain or ""
        if domain == "com.microsoft.nchwc":
            raise ModelError(
                f"node {node.name!r} is onnxruntime's NCHWc layout op {domain}:{node.op}: the model was saved at "
                f"ORT_ENABLE_ALL, whose layout transformations are specific to the machine that saved it. Explain the "
                f"model as exported, or saved at ORT_ENABLE_EXTENDED or below "
                f"(SessionOptions.graph_optimization_level with optimized_model_filepath).")
        if node.op in QOPERATOR_OPS:
            raise ModelError(
                f"node {node.name!r} is the quantized op {node.op}: the model is in onnxruntime's QOperator format, "
                f"whose activations are integers throughout. onnx-rcam explains INT8 models in the QDQ format: "
                f"quantize with onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ) (the "
                f"default), or explain the float model.")
        if domain == CONTRIB and node.op in FUSED:
            FUSED[node.op](graph, node)
        elif domain not in ("", "ai.onnx"):
            where = ("onnxruntime's contrib op, written by its graph optimizations: explain the model as exported, "
                     "or saved at ORT_ENABLE_BASIC" if domain == CONTRIB else "a custom op")
            raise ModelError(f"node {node.name!r} is {domain}:{node.op}, {where}. onnx-rcam cannot see what it "
                             f"computes (it knows the standard ONNX ops and onnxruntime's "
                             f"{', '.join(sorted(FUSED))}).")
        elif node.op == "DequantizeLinear" and all(isinstance(t, gs.Constant) for t in node.inputs if t.name):
            _fold_dequantized(node)
    graph.cleanup().toposort()


def per_axis(value: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A quantization parameter, per tensor or per axis (1-D along `axis`), in float64, shaped to broadcast over a
    rank-`rank` tensor."""
    value = value.astype(np.float64)
    if value.size == 1 or rank == 0:
        return value.reshape([])
    shape = [1] * rank
    shape[axis % rank] = value.size
    return value.reshape(shape)


def _fold_dequantized(node: gs.Node) -> None:
    """(q - zero point) * scale, per tensor or along `axis`, as a float constant under the output's name."""
    if node.attrs.get("block_size", 0):
        raise ModelError(f"node {node.name!r}: blocked quantization (DequantizeLinear with block_size) is not "
                         f"supported; quantize weights per tensor or per channel")
    quantized = node.inputs[0].values
    scale = node.inputs[1].values
    zero_point = node.inputs[2].values if len(node.inputs) > 2 and node.inputs[2].name else np.zeros(1)
    axis, rank = node.attrs.get("axis", 1), quantized.ndim
    value = (quantized - per_axis(zero_point, axis, rank)) * per_axis(scale, axis, rank)
    output = node.outputs[0]
    node.outputs.clear()
    output.to_constant(value.astype(scale.dtype))


def _activation(graph: gs.Graph, name: str, kind, params: list[float], x: gs.Variable, y: gs.Variable) -> None:
    """y = kind(x) as the standard op; params as onnxruntime's fused kernels read them."""
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind in ("", None, "Identity"):
        graph.nodes.append(gs.Node("Identity", f"{name}/identity", inputs=[x], outputs=[y]))
        return
    attrs, inputs = {}, [x]
    if kind == "LeakyRelu":
        attrs["alpha"] = params[0] if params else 0.01
    elif kind == "HardSigmoid":
        attrs["alpha"], attrs["beta"] = (params + [0.2, 0.5][len(params):])[:2]
    elif kind == "Clip":
        low, high = (params + [-np.inf, np.inf][len(params):])[:2]
        inputs += [gs.Constant(f"{name}/min", np.array(low, dtype=x.dtype or np.float32)),
                   gs.Constant(f"{name}/max", np.array(high, dtype=x.dtype or np.float32))]
    elif kind not in ("Relu", "Sigmoid", "Tanh"):
        raise ModelError(f"fused node {name!r} applies the activation {kind!r}, which onnx-rcam does not know")
    graph.nodes.append(gs.Node(kind, f"{name}/{kind.lower()}", attrs, inputs, [y]))


def _unfuse(graph: gs.Graph, node: gs.Node, op: str, inputs: list, attrs: dict, kind, params: list[float],
            addend: gs.Tensor | None = None) -> None:
    """Replace `node` by op(inputs) [+ addend] -> activation, the activation writing node's output."""
    y = node.outputs[0]
    linear = gs.Variable(f"rcam/unfused/{y.name}/{op.lower()}", dtype=y.dtype)
    graph.nodes.append(gs.Node(op, node.name, attrs, inputs, [linear]))
    if addend is not None:
        total = gs.Variable(f"rcam/unfused/{y.name}/sum", dtype=y.dtype)
        graph.nodes.append(gs.Node("Add", f"{node.name}/add", inputs=[linear, addend], outputs=[total]))
        linear = total
    node.inputs.clear()
    node.outputs.clear()
    _activation(graph, node.name, kind, list(params), linear, y)


def _fused_conv(graph: gs.Graph, node: gs.Node) -> None:
    """FusedConv(X, W, B, Z) = activation(Conv(X, W, B) + Z)."""
    attrs = {k: v for k, v in node.attrs.items() if k not in ("activation", "activation_params")}
    inputs = list(node.inputs[:3])
    addend = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
    _unfuse(graph, node, "Conv", inputs, attrs, node.attrs.get("activation"), node.attrs.get("activation_params", []),
            addend)


def _fused_gemm(graph: gs.Graph, node: gs.Node) -> None:
    """FusedGemm(A, B, C) = activation(alpha A' B' + beta C)."""
    attrs = {k: node.attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in node.attrs}
    alpha = node.attrs.get("activation_alpha", node.attrs.get("leaky_relu_alpha"))
    params = [p for p in (alpha, node.attrs.get("activation_beta")) if p is not None]
    _unfuse(graph, node, "Gemm", list(node.inputs), attrs, node.attrs.get("activation"), params)


def _fused_matmul(graph: gs.Graph, node: gs.Node) -> None:
    """FusedMatMul(A, B) = alpha A' B', A' and B' transposed in their last two axes where asked."""
    if any(node.attrs.get(k, 0) for k in ("transBatchA", "transBatchB")):
        raise ModelError(f"FusedMatMul node {node.name!r} transposes batch axes, which onnx-rcam does not support")
    a, b = node.inputs
    inputs = []
    for tensor, flag in ((a, "transA"), (b, "transB")):
        if not node.attrs.get(flag, 0):
            inputs.append(tensor)
        elif isinstance(tensor, gs.Constant):
            inputs.append(gs.Constant(f"rcam/unfused/{tensor.name}/T", np.swapaxes(tensor.values, -1, -2).copy()))
        else:
            raise ModelError(f"FusedMatMul node {node.name!r} transposes its computed input {tensor.name!r}, which "
                             f"onnx-rcam does not support")
    alpha = float(node.attrs.get("alpha", 1.0))
    if alpha != 1.0:
        constant = next((i for i, t in enumerate(inputs) if isinstance(t, gs.Constant)), None)
        if constant is None:
            raise ModelError(f"FusedMatMul node {node.name!r} scales a product of computed tensors")
        inputs[constant] = gs.Constant(f"rcam/unfused/{inputs[constant].name}/scaled",
                                       (inputs[constant].values * alpha).astype(inputs[constant].values.dtype))
    _unfuse(graph, node, "MatMul", inputs, {}, None, [])


def _written_out(graph: gs.Graph, node: gs.Node, steps) -> None:
    """Replace `node` by standard ops: steps(x, emit) builds them with emit(op, inputs, **attrs) -> tensor and
    returns the result, which takes over the node's output."""
    y = node.outputs[0]
    count = [0]

    def emit(op, inputs, **attrs):
        count[0] += 1
        out = gs.Variable(f"rcam/unfused/{y.name}/{op.lower()}_{count[0]}", dtype=y.dtype)
        graph.nodes.append(gs.Node(op, f"{node.name}/{op.lower()}_{count[0]}", attrs, list(inputs), [out]))
        return out

    def constant(value):
        count[0] += 1
        return gs.Constant(f"rcam/unfused/{y.name}/constant_{count[0]}", np.array(value, dtype=y.dtype or np.float32))

    inputs = list(node.inputs)
    node.inputs.clear()
    node.outputs.clear()
    result = steps(inputs, emit, constant)
    producer = result.inputs[0]
    producer.outputs[0] = y


def _gelu(x, emit, constant):
    """x * (1 + erf(x / sqrt 2)) / 2, as exporters write the exact GELU before opset 20."""
    gate = emit("Add", [emit("Erf", [emit("Div", [x, constant(np.sqrt(2.0))])]), constant(1.0)])
    return emit("Mul", [emit("Mul", [x, gate]), constant(0.5)])


def _tanh_gelu(x, emit, constant):
    """(x / 2) * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))."""
    cube = emit("Mul", [emit("Mul", [x, x]), x])
    inner = emit("Mul", [emit("Add", [x, emit("Mul", [cube, constant(0.044715)])]), constant(np.sqrt(2 / np.pi))])
    return emit("Mul", [emit("Mul", [x, constant(0.5)]), emit("Add", [emit("Tanh", [inner]), constant(1.0)])])


def _with_bias(inputs, emit):
    return emit("Add", inputs[:2]) if len(inputs) > 1 and inputs[1].name else inputs[0]


def _quick_gelu(graph: gs.Graph, node: gs.Node) -> None:
    """QuickGelu(x) = x * sigmoid(alpha x): onnxruntime's fusion of SiLU (alpha 1) and of the GELU approximation."""
    alpha = float(node.attrs.get("alpha", 1.702))
    _written_out(graph, node, lambda inputs, emit, constant: emit(
        "Mul", [inputs[0], emit("Sigmoid", [emit("Mul", [inputs[0], constant(alpha)])])]))


def _contrib_gelu(graph: gs.Graph, node: gs.Node) -> None:
    """Gelu(x), BiasGelu(a, b) = Gelu(a + b): the exact GELU."""
    _written_out(graph, node, lambda inputs, emit, constant: _gelu(_with_bias(inputs, emit), emit, constant))


def _fast_gelu(graph: gs.Graph, node: gs.Node) -> None:
    """FastGelu(x, bias) = the tanh approximation of GELU at x + bias."""
    _written_out(graph, node, lambda inputs, emit, constant: _tanh_gelu(_with_bias(inputs, emit), emit, constant))


FUSED = {"FusedConv": _fused_conv, "FusedGemm": _fused_gemm, "FusedMatMul": _fused_matmul, "QuickGelu": _quick_gelu,
         "Gelu": _contrib_gelu, "BiasGelu": _contrib_gelu, "FastGelu": _fast_gelu}
