"""Element-wise ops: activations (pass or their derivative), unfoldable BatchNormalization, Add/Sum."""

from __future__ import annotations

import numpy as np

from ..canonicalize import is_activation
from ..linear import LinearLayer, NonlinearOp, WeightRef
from . import Context, always_nonnegative, like_all_inputs, like_first_input, register, unsupported
from .common import constant_input, keeps_shape, static_shape


def _nonlinear(ctx: Context, node, relevance, vjp):
    op = NonlinearOp(node.inputs[0].name, node.outputs[0].name, node.op, same_shape=True, vjp=vjp)
    return [ctx.rule(node).nonlinear(ctx.builder, op, relevance[0])]


@register("Relu", sign=always_nonnegative)
def relu(ctx: Context, node, relevance):
    x = node.inputs[0].name
    return _nonlinear(ctx, node, relevance,
                      lambda b, r: b.where(b.greater(x, b.const(0.0)), r, b.const(0.0)))


@register("LeakyRelu", sign=like_first_input)
def leaky_relu(ctx: Context, node, relevance):
    x, slope = node.inputs[0].name, node.attrs.get("alpha", 0.01)
    return _nonlinear(ctx, node, relevance,
                      lambda b, r: b.mul(r, b.where(b.greater(x, b.const(0.0)), b.const(1.0), b.const(slope))))


def _clip_sign(node, is_nonnegative) -> bool:
    has_low = len(node.inputs) > 1 and node.inputs[1].name
    return is_nonnegative(node.inputs[0]) or bool(has_low and is_nonnegative(node.inputs[1]))


@register("Clip", sign=_clip_sign)
def clip(ctx: Context, node, relevance):
    x = node.inputs[0].name
    low, high = constant_input(node, 1), constant_input(node, 2)
    if (len(node.inputs) > 1 and node.inputs[1].name and low is None) or \
            (len(node.inputs) > 2 and node.inputs[2].name and high is None):
        raise unsupported(node, "its bounds are computed at run time; only constant bounds are supported")

    def inside_bounds(b, r):
        mask = None
        if low is not None:
            mask = b.greater(x, b.const(float(low)))
        if high is not None:
            below = b.less(x, b.const(float(high)))
            mask = below if mask is None else b.and_(mask, below)
        return r if mask is None else b.where(mask, r, b.const(0.0))

    return _nonlinear(ctx, node, relevance, inside_bounds)


@register("BatchNormalization")
def batch_normalization(ctx: Context, node, relevance):
    """A BatchNormalization that canonicalize could not fold into a preceding linear layer."""
    params = [constant_input(node, i) for i in range(1, 5)]
    if any(p is None for p in params):
        raise unsupported(node, "its parameters are computed at run time")
    gamma, _, _, var = params
    slope = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    rank = len(static_shape(node.inputs[0]))
    slope = slope.reshape([-1] + [1] * (rank - 2)).astype(np.float32)
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(r, b.const(slope, "bn_slope")))


@register("Add", "Sum", sign=like_all_inputs)
def add_or_sum(ctx: Context, node, relevance):
    activations = [i for i, t in enumerate(node.inputs) if is_activation(t)]
    if len(activations) == 1:
        # Activation plus a constant (a bias): the constant takes no relevance.
        result = [None] * len(node.inputs)
        result[activations[0]] = _unbroadcast(ctx.builder, node.inputs[activations[0]], node.outputs[0],
                                              relevance[0])
        return result
    constants = [constant_input(node, i) for i in range(len(node.inputs)) if i not in activations]
    bias = sum(constants) if constants else None
    inputs = [node.inputs[i] for i in activations]
    output = node.outputs[0]

    def forward(b, xs, w):
        return b.scale(b.sum(xs), w.scalar())

    def transpose(b, g, w):
        return [_unbroadcast(b, x, output, b.scale(g, w.scalar())) for x in inputs]

    layer = LinearLayer([x.name for x in inputs], output.name, WeightRef(np.array(1.0, dtype=np.float32)), bias,
                        forward, transpose, op=node.op, same_shape=keeps_shape(inputs, output))
    per_activation = ctx.rule(node).linear(ctx.builder, layer, relevance[0])
    result = [None] * len(node.inputs)
    for i, r in zip(activations, per_activation):
        result[i] = r
    return result


def _unbroadcast(b, x, output, g):
    """Sum g over the axes along which x was broadcast to the output's shape."""
    if g is None:
        return None
    x_shape, out_shape = static_shape(x), static_shape(output)
    if x_shape == out_shape:
        return g
    lead = len(out_shape) - len(x_shape)
    axes = list(range(lead)) + [lead + i for i, n in enumerate(x_shape) if n == 1 and out_shape[lead + i] != 1]
    return b.reshape_like(b.reduce_sum(g, axes, keepdims=True), x.name)
