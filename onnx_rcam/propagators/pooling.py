"""Pooling: average pools and spatial means are linear layers with implicit non-negative weights; MaxPool routes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..linear import LinearLayer, NonlinearOp, WeightRef
from . import Context, like_first_input, register, unsupported
from .common import (constant_input, keeps_shape, spatial_sizes, static_shape, target_shape, transpose_window_op,
                     window_attrs)

UNIT = WeightRef(np.array(1.0, dtype=np.float32))


@register("GlobalAveragePool", sign=like_first_input)
def global_average_pool(ctx: Context, node, relevance):
    x = node.inputs[0]
    count = int(np.prod(spatial_sizes(x)))

    def forward(b, xs, w, offset):
        return b.scale(b.node("GlobalAveragePool", [xs[0]]), w.scalar())

    def transpose(b, g, w):
        return [b.expand(b.scale(g, w.scalar() / count), target_shape(b, x, node.outputs[0], 1))]

    layer = LinearLayer([x.name], node.outputs[0].name, UNIT, None, forward, transpose, op=node.op,
                        same_shape=keeps_shape([x], node.outputs[0]))
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])


@register("ReduceMean", "ReduceSum", sign=like_first_input)
def reduce_mean_or_sum(ctx: Context, node, relevance):
    x = node.inputs[0]
    shape = static_shape(x)
    axes = node.attrs.get("axes")
    if axes is None:
        axes = constant_input(node, 1)
    if axes is None or len(axes) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            raise unsupported(node, "noop_with_empty_axes is not supported")
        axes = range(len(shape))
    axes = sorted(int(a) % len(shape) for a in axes)
    reduced = [shape[a] for a in axes]
    if not all(isinstance(n, int) for n in reduced):
        raise unsupported(node, f"it reduces axes {axes} of shape {shape}: reduced axes must be static")
    keepdims = node.attrs.get("keepdims", 1)
    factor = 1.0 / np.prod(reduced) if node.op == "ReduceMean" else 1.0

    def forward(b, xs, w, offset):
        return b.scale(b.reduce_sum(xs[0], axes, keepdims), w.scalar() * factor)

    def transpose(b, g, w):
        kept = g if keepdims else b.unsqueeze(g, axes)
        return [b.expand(b.scale(kept, w.scalar() * factor), target_shape(b, x, node.outputs[0], 1))]

    layer = LinearLayer([x.name], node.outputs[0].name, UNIT, None, forward, transpose, op=node.op,
                        same_shape=keeps_shape([x], node.outputs[0]))
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])


@register("AveragePool", sign=like_first_input)
def average_pool(ctx: Context, node, relevance):
    x, y = node.inputs[0], node.outputs[0]
    channels = static_shape(x)[1]
    kernel = list(node.attrs["kernel_shape"])
    attrs = window_attrs(node, kernel)
    in_sizes, out_sizes = spatial_sizes(x), spatial_sizes(y)
    inverse_divisor = _inverse_divisor(node, in_sizes, out_sizes, attrs)
    window = WeightRef(np.ones([channels, 1, *kernel], dtype=np.float32))

    def forward(b, xs, w, offset):
        return b.scale(b.node("AveragePool", [xs[0]], **node.attrs), w.scalar())

    def transpose(b, g, w):
        per_window = b.mul(b.scale(g, w.scalar()), b.const(inverse_divisor, "avgpool_inverse_divisor"))
        return [transpose_window_op(b, per_window, window, attrs, channels, in_sizes, out_sizes)]

    layer = LinearLayer([x.name], y.name, UNIT, None, forward, transpose, op=node.op, same_shape=keeps_shape([x], y))
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])


def _inverse_divisor(node, in_sizes, out_sizes, attrs) -> np.ndarray:
    """1 / (what AveragePool divides each window's sum by), as onnxruntime computes it.

    Pooling a map of ones gives (in-bounds count) / divisor per window; the in-bounds count is exact arithmetic.
    Asking the runtime itself keeps count_include_pad and ceil_mode edge cases identical to the forward pass.
    """
    pooled = run_single_op(node.op, dict(node.attrs), np.ones([1, 1, *in_sizes], dtype=np.float32))
    in_bounds = np.ones(out_sizes, dtype=np.float64)
    rank = len(in_sizes)
    for axis, (size, out, k, s, d, begin) in enumerate(zip(in_sizes, out_sizes, attrs["kernel_shape"],
                                                           attrs["strides"], attrs["dilations"],
                                                           attrs["pads"][:rank])):
        starts = np.arange(out) * s - begin
        taps = starts[:, None] + np.arange(k)[None, :] * d
        counts = ((taps >= 0) & (taps < size)).sum(axis=1)
        in_bounds = in_bounds * counts.reshape([-1 if i == axis else 1 for i in range(rank)])
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(in_bounds > 0, pooled[0, 0] / in_bounds, 0.0)
    return inverse.astype(np.float32)[None, None]


def run_single_op(op: str, attrs: dict, value: np.ndarray, constants=()) -> np.ndarray:
    """op(value) in onnxruntime, with `constants` as its further inputs in order (None: an optional input left out):
    asking the runtime keeps every mode and edge case exactly the forward pass's."""
    names = [f"input_{i}" if array is not None else "" for i, array in enumerate(constants, 1)]
    node = helper.make_node(op, ["x", *names], ["y"], **attrs)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, value.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(array, name) for name, array in zip(names, constants) if name])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": value})[0]


@register("MaxPool", sign=like_first_input)
def max_pool(ctx: Context, node, relevance):
    if node.attrs.get("storage_order", 0):
        raise unsupported(node, "storage_order=1 is not supported")
    return _route_to_winners(ctx, node, relevance, node.attrs)


@register("GlobalMaxPool", sign=like_first_input)
def global_max_pool(ctx: Context, node, relevance):
    """A MaxPool whose one window is the whole grid."""
    return _route_to_winners(ctx, node, relevance, {"kernel_shape": spatial_sizes(node.inputs[0])})


def _route_to_winners(ctx: Context, node, relevance, attrs: dict):
    x, y = node.inputs[0], node.outputs[0]

    def route_to_winners(b, r):
        # The gradient of max: each window's relevance goes to the position its maximum came from.
        indices = node.outputs[1].name if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].name \
            else b.node("MaxPool", [x.name], outputs=2, **attrs)[1]
        x_shape = b.shape(x.name)
        zeros = b.zeros(b.node("ReduceProd", [x_shape], keepdims=1))
        flat = b.ints([-1])
        routed = b.node("ScatterElements", [zeros, b.reshape(indices, flat), b.reshape(r, flat)], axis=0,
                        reduction="add")
        return b.reshape(routed, x_shape)

    op = NonlinearOp(x.name, y.name, node.op, same_shape=False, vjp=route_to_winners)
    return [ctx.rule(node).nonlinear(ctx.builder, op, relevance[0])]
