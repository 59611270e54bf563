"""Products of two activations: attention (softmax(Q K^T) V) and the scores Q K^T.

LRP holds the attention weights A = softmax(...) constant (Ali et al. 2022, "XAI for Transformers: Better
Explanations through Conservative Propagation"; Achtibat et al. 2024, "AttnLRP"): A V is then linear in V with the
non-negative weights A, and the composite's `attention` rule (rcam: the proportional rule, LRP-epsilon) sends all
relevance through the values; none reaches A, so none reaches Q or K. The gradient rule runs the chain rule through
both operands and through the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import CompositeError
from ..linear import LinearLayer, NonlinearOp, WeightRef
from . import Context, register, unsupported
from .common import produced_by, static_shape
from .elementwise import _nonlinear, unbroadcast

# The attention weights may be reshaped, cast or quantized between the Softmax and the product.
_CARRIERS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Cast", "Identity",
             "QuantizeLinear", "DequantizeLinear", "Dropout")


def is_attention_weights(tensor) -> bool:
    return produced_by(tensor, ("Softmax",), _CARRIERS)


def _swap_last(b, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return b.transpose(name, perm)


@dataclass
class Bilinear:
    """y = product(left, right), linear in each operand: what a propagator needs of MatMul or Einsum.
    product(b, left, right) emits it; adjoint(b, i, g, other) emits the transpose of operand i's linear map (the
    other operand fixed) applied to g, shaped like operand i."""
    node: object
    product: Callable
    adjoint: Callable


def matmul_product(node) -> Bilinear:
    def adjoint(b, i, g, other):
        flipped = _swap_last(b, other, len(static_shape(node.inputs[1 - i])))
        result = b.matmul(g, flipped) if i == 0 else b.matmul(flipped, g)  # g R^T, or L^T g
        return unbroadcast(b, node.inputs[i], node.outputs[0], result)

    return Bilinear(node, lambda b, lhs, rhs: b.matmul(lhs, rhs), adjoint)


def product_of_activations(ctx: Context, product: Bilinear, relevance) -> list:
    """A product of two computed operands: attention (one of them a Softmax's output), or any product under the
    gradient rule."""
    node = product.node
    y, r = node.outputs[0], relevance[0]
    held = [i for i, t in enumerate(node.inputs) if is_attention_weights(t)]
    if len(held) == 1:
        return _attention(ctx, product, held[0], r)

    def vjp(i):
        return lambda b, g: product.adjoint(b, i, g, node.inputs[1 - i].name)

    # Not same-shaped views: a rule that would pass relevance through refuses them; the gradient takes vjp.
    try:
        return [ctx.rule(node).nonlinear(ctx.builder, NonlinearOp(t.name, y.name, node.op, False, vjp(i)), r)
                for i, t in enumerate(node.inputs)]
    except CompositeError:
        raise unsupported(node, "it multiplies two activations, neither of which is attention weights (the output "
                                "of a Softmax): LRP passes relevance through a product of activations only as "
                                "attention, softmax(Q K^T) V; the gradient methods take any product") from None


def _attention(ctx: Context, product: Bilinear, held: int, r) -> list:
    node = product.node
    weights, values = node.inputs[held], node.inputs[1 - held]
    y = node.outputs[0]

    def forward(b, xs, w, offset):
        operands = [weights.name, xs[0]] if held == 0 else [xs[0], weights.name]
        return b.scale(product.product(b, *operands), w.scalar())

    def transpose(b, g, w):
        return [product.adjoint(b, 1 - held, b.scale(g, w.scalar()), weights.name)]

    layer = LinearLayer([values.name], y.name, WeightRef(np.array(1.0, dtype=np.float32)), None, forward, transpose,
                        op=node.op)
    result = [None, None]
    result[1 - held] = ctx.composite.rule_for_attention().linear(ctx.builder, layer, r)[0]
    to_weights = NonlinearOp(weights.name, y.name, node.op, True,
                             lambda b, g: product.adjoint(b, held, g, values.name))
    share = ctx.rule(node).nonlinear(ctx.builder, to_weights, r)
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
