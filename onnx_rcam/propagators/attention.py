"""Products of two activations: attention (softmax(Q K^T) V) and the scores Q K^T.

LRP holds the attention weights A = softmax(...) constant (Ali et al. 2022, "XAI for Transformers: Better
Explanations through Conservative Propagation"; Achtibat et al. 2024, "AttnLRP"): A V is then linear in V with the
non-negative weights A, and the composite's `attention` rule (rcam: the proportional rule, LRP-epsilon) sends all
relevance through the values; none reaches A, so none reaches Q or K. The gradient rule runs the chain rule through
both operands and through the softmax.
"""

from __future__ import annotations

import numpy as np

from ..errors import CompositeError
from ..linear import LinearLayer, NonlinearOp, WeightRef
from . import Context, register, unsupported
from .common import static_shape
from .elementwise import _nonlinear, unbroadcast

# The attention weights may be reshaped, cast or quantized between the Softmax and the product.
_CARRIERS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Cast", "Identity",
             "QuantizeLinear", "DequantizeLinear", "Dropout")


def is_attention_weights(tensor) -> bool:
    while tensor.inputs:
        producer = tensor.inputs[0]
        if producer.op == "Softmax":
            return True
        if producer.op not in _CARRIERS:
            return False
        tensor = producer.inputs[0]
    return False


def _swap_last(b, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return b.transpose(name, perm)


def product_of_activations(ctx: Context, node, relevance) -> list:
    """MatMul(left, right) with both operands computed."""
    left, right = node.inputs
    y, r = node.outputs[0], relevance[0]
    rank = len(static_shape(y))
    if rank < 2:
        raise unsupported(node, "its output's rank is unknown")
    held = [i for i, t in enumerate(node.inputs) if is_attention_weights(t)]
    if len(held) == 1:
        return _attention(ctx, node, held[0], r, rank)

    def to_left(b, g):  # d(L R)/dL applied to g: g R^T
        return unbroadcast(b, left, y, b.matmul(g, _swap_last(b, right.name, len(static_shape(right)))))

    def to_right(b, g):  # L^T g
        return unbroadcast(b, right, y, b.matmul(_swap_last(b, left.name, len(static_shape(left))), g))

    # Not same-shaped views: a rule that would pass relevance through refuses them; the gradient takes vjp.
    try:
        return [ctx.rule(node).nonlinear(ctx.builder, NonlinearOp(t.name, y.name, node.op, False, vjp), r)
                for t, vjp in ((left, to_left), (right, to_right))]
    except CompositeError:
        raise unsupported(node, "it multiplies two activations, neither of which is attention weights (the output "
                                "of a Softmax): LRP passes relevance through a product of activations only as "
                                "attention, softmax(Q K^T) V; the gradient methods take any product") from None


def _attention(ctx: Context, node, held: int, r, rank: int) -> list:
    weights, values = node.inputs[held], node.inputs[1 - held]
    y = node.outputs[0]

    def forward(b, xs, w, offset):
        operands = [weights.name, xs[0]] if held == 0 else [xs[0], weights.name]
        return b.scale(b.matmul(*operands), w.scalar())

    def transpose(b, g, w):
        g = b.scale(g, w.scalar())
        flipped = _swap_last(b, weights.name, len(static_shape(weights)))
        product = b.matmul(flipped, g) if held == 0 else b.matmul(g, flipped)  # A^T g, or g A^T
        return [unbroadcast(b, values, y, product)]

    layer = LinearLayer([values.name], y.name, WeightRef(np.array(1.0, dtype=np.float32)), None, forward, transpose,
                        op=node.op)
    result = [None, None]
    result[1 - held] = ctx.composite.rule_for_attention().linear(ctx.builder, layer, r)[0]

    def to_weights(b, g):  # d(A V)/dA applied to g: g V^T; d(V A)/dA: V^T g
        v = _swap_last(b, values.name, len(static_shape(values)))
        return unbroadcast(b, weights, y, b.matmul(g, v) if held == 0 else b.matmul(v, g))

    share = ctx.rule(node).nonlinear(ctx.builder, NonlinearOp(weights.name, y.name, node.op, True, to_weights), r)
    result[held] = None if share == r else share
    return result


@register("Softmax")
def softmax(ctx: Context, node, relevance):
    """A Softmax inside the network (attention's): LRP holds its output constant where it weighs values, so
    relevance reaches it only under the gradient rule: y * (g - sum(g * y)) over its axis."""
    y = node.outputs[0].name
    axis = node.attrs.get("axis", -1)

    def vjp(b, g):
        weighted = b.mul(g, y)
        return b.mul(y, b.sub(g, b.reduce_sum(weighted, [axis % len(static_shape(node.outputs[0]))])))

    return _nonlinear(ctx, node, relevance, vjp)
