"""Mul and Div: an activation scaled by a constant, gated, or divided by a normaliser.

- By a constant (Mul, or Div by the reciprocal): a linear layer whose weight is the constant; `rcam` passes.
- By a gate, the output of a Sigmoid or HardSigmoid (squeeze-and-excitation blocks, SiLU/Swish x * sigmoid(x)): LRP
  holds the gate constant, so the other factor takes all the relevance and the gate none.
- By another activation (Div): a normaliser, as in torch's LocalResponseNorm x / (k + alpha * mean(x^2))^beta; LRP
  holds it constant, like a gate.
- A constant divided by an activation: an activation of it, c / x.
- By itself (x * x): the square, an activation of one input.

Under the gradient rule the factors held constant get their share of the product or quotient rule instead.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..canonicalize import is_activation
from ..linear import LinearLayer, NonlinearOp, WeightRef
from . import Context, like_all_inputs, register, unsupported
from .common import constant_input, keeps_shape, produced_by
from .elementwise import unbroadcast

GATES = ("Sigmoid", "HardSigmoid")
# A gate may be reshaped, or quantized and dequantized (QDQ models), before it scales.
LAYOUT_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "QuantizeLinear", "DequantizeLinear")


@register("Mul", sign=like_all_inputs)
def mul(ctx: Context, node, relevance):
    if not all(is_activation(t) for t in node.inputs):
        factor = next(constant_input(node, i) for i, t in enumerate(node.inputs) if not is_activation(t))
        return _scaled_by_constant(ctx, node, relevance[0], factor)
    x, y = node.inputs[0], node.outputs[0]
    if node.inputs[1] is x:
        # x * x, as torch writes x^2 (its LocalResponseNorm does): an activation of one input, derivative 2 x.
        square = NonlinearOp(x.name, y.name, node.op, same_shape=True,
                             vjp=lambda b, g: b.mul(g, b.scale(x.name, 2.0)))
        return [ctx.rule(node).nonlinear(ctx.builder, square, relevance[0]), None]
    gates = [i for i, t in enumerate(node.inputs) if is_gate(t)]
    if len(gates) == 2:  # a gate on a Sigmoid-activated tensor (SE or SiLU after a Sigmoid): the gate is computed
        gates = [i for i in gates if _computed_from(node.inputs[i], node.inputs[1 - i])]  # from the other factor
        why = "both factors are gates and neither is computed from the other"
    else:
        gates = gates or _self_gate(node)
        why = ("neither factor is a gate (the output of a Sigmoid or HardSigmoid, or an element-wise function of "
               "the other factor's source, as in GELU and Mish)")
    if len(gates) != 1:
        raise unsupported(node, f"it multiplies two activations and {why}; relevance passes through a product of "
                                f"activations only when exactly one factor is a gate")
    gate, scaled = node.inputs[gates[0]], node.inputs[1 - gates[0]]
    y, r = node.outputs[0], relevance[0]
    result = [None, None]
    result[1 - gates[0]] = _scaled_operand(
        ctx, node, scaled, r, lambda b, g: unbroadcast(b, scaled, y, b.mul(g, gate.name)))
    result[gates[0]] = _held_operand(
        ctx, node, gate, r, lambda b, g: unbroadcast(b, gate, y, b.mul(g, scaled.name)))
    return result


@register("Div", sign=like_all_inputs)
def div(ctx: Context, node, relevance):
    numerator, divisor = node.inputs
    if not is_activation(numerator):
        # c / x, an activation of x (as in 1 / sqrt(var) spelled out): LRP passes, the gradient is -c / x^2 = -y / x.
        y = node.outputs[0].name
        reciprocal = NonlinearOp(divisor.name, y, node.op, same_shape=keeps_shape([divisor], node.outputs[0]),
                                 vjp=lambda b, g: b.scale(b.div(b.mul(g, y), divisor.name), -1.0))
        return [None, ctx.rule(node).nonlinear(ctx.builder, reciprocal, relevance[0])]
    if not is_activation(divisor):
        return _scaled_by_constant(ctx, node, relevance[0], 1.0 / constant_input(node, 1))
    y, r = node.outputs[0], relevance[0]

    def to_numerator(b, g):  # d(x / d)/dx = 1 / d
        return unbroadcast(b, numerator, y, b.div(g, divisor.name))

    def to_divisor(b, g):  # d(x / d)/dd = -x / d^2 = -y / d
        return unbroadcast(b, divisor, y, b.scale(b.div(b.mul(g, y.name), divisor.name), -1.0))

    return [_scaled_operand(ctx, node, numerator, r, to_numerator), _held_operand(ctx, node, divisor, r, to_divisor)]


def is_gate(tensor: gs.Tensor) -> bool:
    """Whether the tensor is the output of a Sigmoid or HardSigmoid, possibly reshaped or broadcast since."""
    return produced_by(tensor, GATES, LAYOUT_OPS)


# Ops that compute each output element from the same element of their inputs (and constants) only.
ELEMENTWISE_OPS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Exp", "Log",
                   "Softplus", "Softsign", "Elu", "Selu", "Celu", "Gelu", "Mish", "Abs", "Neg", "Sqrt", "Reciprocal",
                   "Cast", "Identity", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "QuantizeLinear",
                   "DequantizeLinear")
# By a constant: the value, only scaled (or rounded to a quantization grid and back).
LINEAR_ELEMENTWISE_OPS = ("Mul", "Div", "Cast", "Identity", "QuantizeLinear", "DequantizeLinear")


def _self_gate(node) -> list[int]:
    """[i] when factor i is a self-gate: an element-wise function of the tensor that the other factor only scales.
    GELU written out is x * (1 + erf(x / sqrt 2)) / 2 or (x / 2) * (1 + tanh(...x...)), Mish x * tanh(softplus(x)):
    LRP holds the gate constant, as SiLU's sigmoid, so that all relevance goes to x."""
    sources = [_scaled_source(t) for t in node.inputs]
    return [i for i in (0, 1) if sources[i] is not sources[1 - i]
            and _elementwise_of(node.inputs[i], sources[1 - i], depth=16)]


def _scaled_source(tensor: gs.Tensor) -> gs.Tensor:
    """The tensor that `tensor` is a constant multiple (or copy) of."""
    while tensor.inputs and tensor.inputs[0].op in LINEAR_ELEMENTWISE_OPS:
        producer = tensor.inputs[0]
        computed = [t for t in producer.inputs if is_activation(t)]
        if len(computed) != 1 or (producer.op == "Div" and producer.inputs[0] is not computed[0]):
            break
        tensor = computed[0]
    return tensor


def _elementwise_of(tensor: gs.Tensor, source: gs.Tensor, depth: int) -> bool:
    """Whether `tensor` is computed from `source` (and constants) by element-wise ops of the same shape only."""
    if tensor is source:
        return True
    if depth == 0 or not tensor.inputs or tensor.inputs[0].op not in ELEMENTWISE_OPS or \
            not _same_static_shape(tensor, source):
        return False
    computed = [t for t in tensor.inputs[0].inputs if is_activation(t)]
    return bool(computed) and all(_elementwise_of(t, source, depth - 1) for t in computed)


def _computed_from(tensor: gs.Tensor, source: gs.Tensor) -> bool:
    """Whether `source` lies upstream of `tensor`."""
    seen, stack = set(), [tensor]
    while stack:
        current = stack.pop()
        if current is source:
            return True
        if current.name not in seen:
            seen.add(current.name)
            stack.extend(i for producer in current.inputs for i in producer.inputs if is_activation(i))
    return False


def _scaled_by_constant(ctx: Context, node, relevance: str, factor: np.ndarray) -> list:
    """activation * factor: a linear layer whose weight is the (broadcast) constant factor."""
    index = next(i for i, t in enumerate(node.inputs) if is_activation(t))
    x, y = node.inputs[index], node.outputs[0]

    def forward(b, xs, w, offset):
        return b.mul(xs[0], w.name(b))

    def transpose(b, g, w):
        return [unbroadcast(b, x, y, b.mul(g, w.name(b)))]

    layer = LinearLayer([x.name], y.name, WeightRef(np.asarray(factor, dtype=np.float32)), None, forward, transpose,
                        op=node.op, same_shape=keeps_shape([x], y))
    result = [None] * len(node.inputs)
    result[index] = ctx.rule(node).linear(ctx.builder, layer, relevance)[0]
    return result


def _scaled_operand(ctx: Context, node, x: gs.Tensor, relevance: str, vjp) -> str | None:
    """The relevance of x in x * gate or x / divisor, the other factor held constant: R passed through, or vjp(R)."""
    op = NonlinearOp(x.name, node.outputs[0].name, node.op, same_shape=keeps_shape([x], node.outputs[0]), vjp=vjp)
    return ctx.rule(node).nonlinear(ctx.builder, op, relevance)


def _held_operand(ctx: Context, node, factor: gs.Tensor, relevance: str, vjp) -> str | None:
    """The relevance of the factor that LRP holds constant (a gate, a divisor).

    A rule that passes relevance through the op (every LRP rule) gives the factor none; a rule that asks for the
    op's derivative (gradient) gives it vjp(R). The passed-through value is discarded, so the view may claim that
    the factor has the output's shape even where it is broadcast.
    """
    view = NonlinearOp(factor.name, node.outputs[0].name, node.op, same_shape=True, vjp=vjp)
    share = ctx.rule(node).nonlinear(ctx.builder, view, relevance)
    return None if share == relevance else share


def _same_static_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    """Same rank and the same size wherever both sizes are numbers (dynamic dimensions may be named differently)."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    return all(m == n for m, n in zip(a.shape, b.shape) if isinstance(m, int) and isinstance(n, int))
