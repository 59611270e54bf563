"""Element-wise ops: activations (pass or their derivative), unfoldable BatchNormalization, LRN, Add/Sum.

Sign rules: Relu, Sigmoid and HardSigmoid never output a negative value; most other activations keep the sign of
their input (f(x) >= 0 for x >= 0), so their output is known to be non-negative wherever their input is.
"""

from __future__ import annotations

import numpy as np

from ..canonicalize import is_activation
from ..linear import LinearLayer, NonlinearOp, WeightRef
from . import Context, always_nonnegative, like_all_inputs, like_first_input, register, unsupported
from .common import constant_input, keeps_shape, required_constant, static_shape, target_shape


def _nonlinear(ctx: Context, node, relevance, vjp):
    op = NonlinearOp(node.inputs[0].name, node.outputs[0].name, node.op, same_shape=True, vjp=vjp)
    return [ctx.rule(node).nonlinear(ctx.builder, op, relevance[0])]


@register("Relu", sign=always_nonnegative)
def relu(ctx: Context, node, relevance):
    x = node.inputs[0].name
    ctx.builder.equal_where_nonzero[x] = node.outputs[0].name
    return _nonlinear(ctx, node, relevance,
                      lambda b, r: b.where(b.greater(x, b.const(0.0)), r, b.const(0.0)))


@register("LeakyRelu", sign=like_first_input)
def leaky_relu(ctx: Context, node, relevance):
    slope = node.attrs.get("alpha", 0.01)
    return _nonlinear(ctx, node, relevance, lambda b, r: _sloped_below_zero(b, node.inputs[0].name, r, slope))


def _sloped_below_zero(b, x: str, r: str, slope) -> str:
    """r times the derivative of max(x, 0) + slope * min(x, 0): 1 above 0, slope (scalar or per channel) below."""
    return b.mul(r, b.where(b.greater(x, b.const(0.0)), b.const(1.0), b.const(slope, "slope")))


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


@register("Sigmoid", sign=always_nonnegative)
def sigmoid(ctx: Context, node, relevance):
    y = node.outputs[0].name
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(r, b.mul(y, b.sub(b.const(1.0), y))))


@register("Tanh", sign=like_first_input)
def tanh(ctx: Context, node, relevance):
    y = node.outputs[0].name
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(r, b.sub(b.const(1.0), b.mul(y, y))))


@register("HardSigmoid", sign=always_nonnegative)
def hard_sigmoid(ctx: Context, node, relevance):
    y, slope = node.outputs[0].name, node.attrs.get("alpha", 0.2)

    def on_the_ramp(b, r):
        # y = clip(alpha x + beta, 0, 1): slope alpha where 0 < y < 1, flat elsewhere.
        ramp = b.and_(b.greater(y, b.const(0.0)), b.less(y, b.const(1.0)))
        return b.where(ramp, b.scale(r, slope), b.const(0.0))

    return _nonlinear(ctx, node, relevance, on_the_ramp)


@register("HardSwish", sign=like_first_input)
def hard_swish(ctx: Context, node, relevance):
    x = node.inputs[0].name

    def derivative(b, r):
        # y = x clip(x / 6 + 1/2, 0, 1): 0 below -3, x / 3 + 1/2 on [-3, 3], 1 above 3.
        ramp = b.add(b.scale(x, 1.0 / 3.0), b.const(0.5))
        above = b.where(b.greater(x, b.const(3.0)), b.const(1.0), ramp)
        return b.mul(r, b.where(b.less(x, b.const(-3.0)), b.const(0.0), above))

    return _nonlinear(ctx, node, relevance, derivative)


@register("Elu", sign=like_first_input)
def elu(ctx: Context, node, relevance):
    x, y, alpha = node.inputs[0].name, node.outputs[0].name, node.attrs.get("alpha", 1.0)
    # Below 0, y = alpha (e^x - 1), so dy/dx = e^x alpha = y + alpha.
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(
        r, b.where(b.greater(x, b.const(0.0)), b.const(1.0), b.add(y, b.const(alpha)))))


@register("PRelu", sign=like_first_input)
def prelu(ctx: Context, node, relevance):
    x, slope = node.inputs[0].name, required_constant(node, 1, "slope")
    return _nonlinear(ctx, node, relevance, lambda b, r: _sloped_below_zero(b, x, r, slope))


@register("Pow", sign=like_first_input)
def power(ctx: Context, node, relevance):
    """x^p with a constant p, e.g. in the denominator of torch's LocalResponseNorm."""
    x, exponent = node.inputs[0].name, required_constant(node, 1, "exponent")
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(
        r, b.mul(b.const(exponent, "exponent"), b.node("Pow", [x, b.const(exponent - 1, "exponent")]))))


@register("Cast", sign=like_first_input)
def cast(ctx: Context, node, relevance):
    return _nonlinear(ctx, node, relevance, lambda b, r: r)


@register("LRN", sign=like_first_input)
def local_response_norm(ctx: Context, node, relevance):
    """y_c = x_c / d_c^beta, d_c = bias + alpha / size * (sum of x^2 over the channels c - below .. c + above)."""
    x, y = node.inputs[0], node.outputs[0].name
    channels = static_shape(x)[1] if len(static_shape(x)) > 2 else None
    if not isinstance(channels, int):
        raise unsupported(node, f"its input has shape {x.shape}: the number of channels must be static")
    size = node.attrs["size"]
    alpha, beta, bias = node.attrs.get("alpha", 1e-4), node.attrs.get("beta", 0.75), node.attrs.get("bias", 1.0)
    below, above = (size - 1) // 2, size // 2

    def window_sum(b, t, before, after):
        """At each channel c, the sum of t over the channels c - before .. c + after: a Conv over the channel axis."""
        channels_as_rows = b.reshape(t, b.ints([0, 1, channels, -1]))  # [N, 1, C, rest]
        ones = b.const(np.ones([1, 1, size, 1]), "lrn_window")
        return b.reshape_like(b.conv(channels_as_rows, ones, kernel_shape=[size, 1], pads=[before, 0, after, 0]),
                              x.name)

    def derivative(b, r):
        # dL/dx_j = r_j d_j^-beta - 2 alpha beta / size * x_j * sum over the c whose window holds j of r_c y_c / d_c;
        # j is in the window of c exactly when c is in [j - above, j + below]: the transposed window.
        d = b.add(b.const(bias), b.scale(window_sum(b, b.mul(x.name, x.name), below, above), alpha / size))
        direct = b.mul(r, b.node("Pow", [d, b.const(-beta)]))
        through_d = window_sum(b, b.div(b.mul(r, y), d), above, below)
        return b.sub(direct, b.scale(b.mul(x.name, through_d), 2.0 * alpha * beta / size))

    return _nonlinear(ctx, node, relevance, derivative)


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
@register("Sub")
def add_or_sum(ctx: Context, node, relevance):
    """A sum of activations (residual joins), a - b (YOLOv8's box width x2 - x1), or an activation plus or minus a
    constant (a bias). Under LRP the constant takes no relevance; c - a is a linear layer of weight -1."""
    activations = [i for i, t in enumerate(node.inputs) if is_activation(t)]
    signs = [1.0, -1.0] if node.op == "Sub" else [1.0] * len(node.inputs)
    output = node.outputs[0]
    if len(activations) == 1 and signs[activations[0]] > 0:
        # Activation plus a constant (a bias): the constant takes no relevance, and the gradient is g.
        result = [None] * len(node.inputs)
        result[activations[0]] = unbroadcast(ctx.builder, node.inputs[activations[0]], output, relevance[0])
        return result
    constants = [signs[i] * constant_input(node, i) for i in range(len(node.inputs)) if i not in activations]
    bias = sum(constants) if constants else None
    inputs = [node.inputs[i] for i in activations]
    weights = [signs[i] for i in activations]

    def forward(b, xs, w, offset):
        total = b.sum([x for x, sign in zip(xs, weights) if sign > 0]) if weights[0] > 0 else b.scale(xs[0], -1.0)
        for x in (x for x, sign in zip(xs[1:], weights[1:]) if sign < 0):
            total = b.sub(total, x)
        return b.scale(total, w.scalar())

    def transpose(b, g, w):
        return [unbroadcast(b, x, output, b.scale(g, sign * w.scalar())) for x, sign in zip(inputs, weights)]

    layer = LinearLayer([x.name for x in inputs], output.name, WeightRef(np.array(1.0, dtype=np.float32)), bias,
                        forward, transpose, op=node.op, same_shape=keeps_shape(inputs, output))
    per_activation = ctx.rule(node).linear(ctx.builder, layer, relevance[0])
    result = [None] * len(node.inputs)
    for i, r in zip(activations, per_activation):
        result[i] = r
    return result


def unbroadcast(b, x, output, g):
    """Sum g over the axes along which x was broadcast to the output's shape."""
    if g is None:
        return None
    x_shape, out_shape = static_shape(x), static_shape(output)
    if x_shape == out_shape:
        return g
    lead = len(out_shape) - len(x_shape)
    axes = list(range(lead)) + [lead + i for i, n in enumerate(x_shape) if n == 1 and out_shape[lead + i] != 1]
    if not axes:  # the shapes differ only in how their dynamic dimensions are named
        return g
    return b.reshape(b.reduce_sum(g, axes, keepdims=True), target_shape(b, x, output, 0))


@register("Softplus", sign=always_nonnegative)
def softplus(ctx: Context, node, relevance):
    x = node.inputs[0].name
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(r, b.node("Sigmoid", [x])))  # d/dx = sigmoid(x)


@register("Selu", sign=like_first_input)
def selu(ctx: Context, node, relevance):
    x, y = node.inputs[0].name, node.outputs[0].name
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    # gamma above 0; below, y = gamma alpha (e^x - 1), so dy/dx = y + gamma alpha.
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(
        r, b.where(b.greater(x, b.const(0.0)), b.const(gamma), b.add(y, b.const(gamma * alpha)))))


@register("Celu", sign=like_first_input)
def celu(ctx: Context, node, relevance):
    x, y, alpha = node.inputs[0].name, node.outputs[0].name, node.attrs.get("alpha", 1.0)
    # 1 above 0; below, y = alpha (e^(x / alpha) - 1), so dy/dx = e^(x / alpha) = y / alpha + 1.
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(
        r, b.where(b.greater(x, b.const(0.0)), b.const(1.0), b.add(b.scale(y, 1.0 / alpha), b.const(1.0)))))


@register("Mish", sign=like_first_input)
def mish(ctx: Context, node, relevance):
    x = node.inputs[0].name

    def derivative(b, r):
        # y = x tanh(softplus(x)): dy/dx = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x).
        t = b.node("Tanh", [b.node("Softplus", [x])])
        return b.mul(r, b.add(t, b.mul(b.mul(x, b.sub(b.const(1.0), b.mul(t, t))), b.node("Sigmoid", [x]))))

    return _nonlinear(ctx, node, relevance, derivative)


SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
GELU_TANH_CUBIC = 0.044715


@register("Gelu", sign=like_first_input)
def gelu(ctx: Context, node, relevance):
    x = node.inputs[0].name
    approximate = node.attrs.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate

    def exact(b, r):
        # y = x Phi(x): dy/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
        cdf = b.scale(b.add(b.const(1.0), b.node("Erf", [b.scale(x, 1.0 / np.sqrt(2.0))])), 0.5)
        pdf = b.scale(b.node("Exp", [b.scale(b.mul(x, x), -0.5)]), 1.0 / np.sqrt(2.0 * np.pi))
        return b.mul(r, b.add(cdf, b.mul(x, pdf)))

    def tanh_form(b, r):
        # y = x (1 + tanh(u)) / 2, u = sqrt(2 / pi) (x + 0.044715 x^3):
        # dy/dx = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2 / pi) (1 + 3 * 0.044715 x^2), t = tanh(u).
        square = b.mul(x, x)
        u = b.scale(b.add(x, b.scale(b.mul(square, x), GELU_TANH_CUBIC)), SQRT_2_OVER_PI)
        t = b.node("Tanh", [u])
        slope = b.scale(b.add(b.const(1.0), b.scale(square, 3 * GELU_TANH_CUBIC)), SQRT_2_OVER_PI)
        inner = b.scale(b.mul(b.mul(x, b.sub(b.const(1.0), b.mul(t, t))), slope), 0.5)
        return b.mul(r, b.add(b.scale(b.add(b.const(1.0), t), 0.5), inner))

    return _nonlinear(ctx, node, relevance, tanh_form if approximate == "tanh" else exact)


@register("Erf", sign=like_first_input)
def erf(ctx: Context, node, relevance):
    """erf, as exporters write the exact GELU before opset 20: x / 2 (1 + erf(x / sqrt 2))."""
    x = node.inputs[0].name
    return _nonlinear(ctx, node, relevance, lambda b, r: b.mul(
        r, b.scale(b.node("Exp", [b.scale(b.mul(x, x), -1.0)]), 2.0 / np.sqrt(np.pi))))
