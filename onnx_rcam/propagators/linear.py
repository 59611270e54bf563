"""Conv, ConvTranspose, Gemm and MatMul with a constant operand: linear layers with explicit weights."""

from __future__ import annotations

import numpy as np

from ..linear import LinearLayer, WeightRef
from . import Context, register, unsupported
from .attention import matmul_product, product_of_activations
from .common import (constant_input, keeps_shape, required_constant, spatial_sizes, transpose_window_op,
                     transposed_conv_attrs, window_attrs)


@register("Conv")
def conv(ctx: Context, node, relevance):
    x, weight = node.inputs[0], required_constant(node, 1, "weight")
    attrs = window_attrs(node, list(weight.shape[2:]))
    group = node.attrs.get("group", 1)
    in_sizes, out_sizes = spatial_sizes(x), spatial_sizes(node.outputs[0])

    def forward(b, xs, w, offset):
        bias = [b.const(np.full(weight.shape[0], offset, np.float32), "offset")] if np.any(offset) else []
        return b.conv(xs[0], w.name(b), *bias, group=group, **attrs)

    def transpose(b, g, w):
        return [transpose_window_op(b, g, w, attrs, group, in_sizes, out_sizes)]

    layer = LinearLayer([x.name], node.outputs[0].name, WeightRef(weight), constant_input(node, 2), forward,
                        transpose, op="Conv", same_shape=keeps_shape([x], node.outputs[0]), offset_in_forward=True)
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])


@register("ConvTranspose")
def conv_transpose(ctx: Context, node, relevance):
    """y = ConvTranspose(x, W), W [C_in, C_out / group, *k]: the adjoint of a Conv with the same weight, strides,
    dilations, group and pads. Its own transpose is that Conv: a Conv reads W as [C_out_conv = C_in,
    C_in_conv / group = C_out / group, *k], exactly the ConvTranspose layout, so no weight is rearranged."""
    x, weight = node.inputs[0], required_constant(node, 1, "weight")
    group = node.attrs.get("group", 1)
    in_sizes, out_sizes = spatial_sizes(x), spatial_sizes(node.outputs[0])
    attrs = transposed_conv_attrs(node, list(weight.shape[2:]), in_sizes, out_sizes)
    out_channels = weight.shape[1] * group

    def forward(b, xs, w, offset):
        bias = [b.const(np.full(out_channels, offset, np.float32), "offset")] if np.any(offset) else []
        return b.node("ConvTranspose", [xs[0], w.name(b), *bias], group=group, **attrs)

    def transpose(b, g, w):
        # g padded by the forward's crops back to the full size; output_padding's positions (below the stride)
        # are in no window.
        conv_attrs = {k: v for k, v in attrs.items() if k != "output_padding"}
        return [b.conv(g, w.name(b), group=group, **conv_attrs)]

    layer = LinearLayer([x.name], node.outputs[0].name, WeightRef(weight), constant_input(node, 2), forward,
                        transpose, op="ConvTranspose", same_shape=keeps_shape([x], node.outputs[0]),
                        offset_in_forward=True)
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])


@register("Gemm")
def gemm(ctx: Context, node, relevance):
    x, matrix = node.inputs[0], constant_input(node, 1)
    if matrix is None or constant_input(node, 0) is not None:
        raise unsupported(node, "only Gemm(activation, constant weight) is supported")
    trans_a = node.attrs.get("transA", 0)
    # One weight layout, [in_features, out_features], with alpha folded in.
    weight = node.attrs.get("alpha", 1.0) * (matrix.T if node.attrs.get("transB", 0) else matrix)
    bias = constant_input(node, 2)
    bias = None if bias is None else node.attrs.get("beta", 1.0) * bias

    def forward(b, xs, w, offset):
        return b.node("Gemm", [xs[0], w.name(b)] + ([b.const(offset)] if np.any(offset) else []), transA=trans_a)

    def transpose(b, g, w):
        grad = b.node("Gemm", [g, w.name(b)], transB=1)
        return [b.transpose(grad, [1, 0]) if trans_a else grad]

    layer = LinearLayer([x.name], node.outputs[0].name, WeightRef(weight.astype(np.float32)), bias, forward,
                        transpose, op="Gemm", same_shape=keeps_shape([x], node.outputs[0]), offset_in_forward=True)
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])


@register("MatMul")
def matmul(ctx: Context, node, relevance):
    x, weight = node.inputs[0], constant_input(node, 1)
    if weight is None and constant_input(node, 0) is None:
        return product_of_activations(ctx, matmul_product(node), relevance)  # attention, or its scores Q K^T
    if weight is None or weight.ndim != 2 or constant_input(node, 0) is not None:
        raise unsupported(node, "only MatMul(activation, constant 2-D matrix) or of two activations is supported")

    def forward(b, xs, w, offset):
        return b.matmul(xs[0], w.name(b))

    def transpose(b, g, w):
        return [b.matmul(g, w.name(b, lambda array: np.ascontiguousarray(array.T), key="T"))]

    layer = LinearLayer([x.name], node.outputs[0].name, WeightRef(weight), None, forward, transpose, op="MatMul",
                        same_shape=keeps_shape([x], node.outputs[0]))
    return ctx.rule(node).linear(ctx.builder, layer, relevance[0])
