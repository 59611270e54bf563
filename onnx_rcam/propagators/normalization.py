"""LayerNormalization and InstanceNormalization: y = scale * (x - mean) / std + bias over some axes.

LRP holds the normalisation's 1 / std constant (Ali et al. 2022, "XAI for Transformers: Better Explanations through
Conservative Propagation"; Achtibat et al. 2024, "AttnLRP"), which makes the op an element-wise scaling of the
centred x: every LRP rule passes relevance through it, as through an activation. The gradient rule takes the full
derivative, the centring and the statistics' own dependence on x included.
"""

from __future__ import annotations

import numpy as np

from . import Context, register, unsupported
from .common import required_constant, static_shape
from .elementwise import _nonlinear


def _normalized_vjp(node, axes: list[int], scale: np.ndarray, epsilon: float):
    """g -> dL/dx for y = scale * x_hat + bias, x_hat = (x - mean) / sqrt(var + eps), statistics over `axes`:
    (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)) / std, with g_hat = scale * g."""
    x = node.inputs[0]
    shape = static_shape(x)
    sizes = [shape[a] for a in axes]
    if not all(isinstance(n, int) for n in sizes):
        raise unsupported(node, f"it normalises axes {axes} of shape {shape}: those axes must be static")
    count = float(np.prod(sizes))

    def mean(b, t):
        return b.scale(b.reduce_sum(t, axes), 1.0 / count)

    def vjp(b, g):
        centred = b.sub(x.name, mean(b, x.name))
        std = b.node("Sqrt", [b.add(mean(b, b.mul(centred, centred)), b.const(epsilon))])
        x_hat = b.div(centred, std)
        g_hat = b.mul(g, b.const(scale, "norm_scale"))
        inner = b.sub(b.sub(g_hat, mean(b, g_hat)), b.mul(x_hat, mean(b, b.mul(g_hat, x_hat))))
        return b.div(inner, std)

    return vjp


@register("LayerNormalization")
def layer_normalization(ctx: Context, node, relevance):
    rank = len(static_shape(node.inputs[0]))
    axis = node.attrs.get("axis", -1) % rank
    scale = required_constant(node, 1, "scale")
    vjp = _normalized_vjp(node, list(range(axis, rank)), scale, node.attrs.get("epsilon", 1e-5))
    return [*_nonlinear(ctx, node, relevance, vjp), None, None][:len(node.inputs)]


@register("InstanceNormalization")
def instance_normalization(ctx: Context, node, relevance):
    rank = len(static_shape(node.inputs[0]))
    scale = required_constant(node, 1, "scale").reshape([-1] + [1] * (rank - 2))
    vjp = _normalized_vjp(node, list(range(2, rank)), scale, node.attrs.get("epsilon", 1e-5))
    return [*_nonlinear(ctx, node, relevance, vjp), None, None]
