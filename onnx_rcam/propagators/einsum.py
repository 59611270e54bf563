"""Einsum of two operands with an explicit equation, as exporters write linear layers and attention with it.

With a constant operand it is a linear layer of the other (the composite's Einsum rule, z+ under rcam); with two
computed operands it is attention when one is a Softmax's output, or any product under the gradient rule
(attention.py). The transpose of either operand's map is again an Einsum: out,other -> operand.
"""

from __future__ import annotations

from ..linear import LinearLayer, WeightRef
from . import Context, register, unsupported
from .attention import Bilinear, product_of_activations
from .common import constant_input, keeps_shape


def _terms(node) -> tuple[list[str], str]:
    equation = node.attrs.get("equation", "")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    if "->" not in equation or "." in equation:
        raise unsupported(node, f"equation {equation!r}: only explicit equations (with ->) without ellipsis are "
                                f"supported")
    left, out = equation.split("->")
    operands = left.split(",")
    if len(operands) != 2 or len(node.inputs) != 2:
        raise unsupported(node, f"equation {equation!r}: only Einsums of two operands are supported")
    for spec in operands:
        if len(set(spec)) != len(spec):
            raise unsupported(node, f"equation {equation!r}: an index repeated within an operand (a diagonal)")
    return operands, out


@register("Einsum")
def einsum(ctx: Context, node, relevance):
    operands, out = _terms(node)
    equation = f"{','.join(operands)}->{out}"

    def adjoint(b, i, g, other):
        if any(index not in out + operands[1 - i] for index in operands[i]):
            raise unsupported(node, f"equation {equation!r} sums an index of operand {i} alone; its transpose "
                                    f"would broadcast it back, which is not supported")
        return b.node("Einsum", [g, other], equation=f"{out},{operands[1 - i]}->{operands[i]}")

    product = Bilinear(node, lambda b, left, right: b.node("Einsum", [left, right], equation=equation), adjoint)
    constants = [constant_input(node, i) for i in (0, 1)]
    if all(c is None for c in constants):
        return product_of_activations(ctx, product, relevance)
    if all(c is not None for c in constants):
        raise unsupported(node, "both operands are constants")
    position = 0 if constants[0] is None else 1  # the activation's
    x = node.inputs[position]

    def forward(b, xs, w, offset):
        pair = [xs[0], w.name(b)] if position == 0 else [w.name(b), xs[0]]
        return product.product(b, *pair)

    def transpose(b, g, w):
        return [adjoint(b, position, g, w.name(b))]

    layer = LinearLayer([x.name], node.outputs[0].name, WeightRef(constants[1 - position]), None, forward, transpose,
                        op=node.op, same_shape=keeps_shape([x], node.outputs[0]))
    result = [None, None]
    result[position] = ctx.rule(node).linear(ctx.builder, layer, relevance[0])[0]
    return result
