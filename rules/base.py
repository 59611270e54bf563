"""What every rule is: a recipe for linear layers and a decision for every other op."""

from __future__ import annotations

import numpy as np

from onnx_rcam.errors import CompositeError


class Rule:
    name = "rule"

    def linear(self, b, layer, relevance) -> list:
        """Relevance of each of `layer.inputs`, given the relevance of its output."""
        raise CompositeError(f"rule {self.name!r} does not apply to linear layers ({layer.op})")

    def nonlinear(self, b, op, relevance):
        """LRP passes relevance through activations; rules that mean otherwise override this."""
        if not op.same_shape:
            raise CompositeError(f"rule {self.name!r} cannot pass relevance through {op.op}: its output has a "
                                 f"different shape than its input; give it the 'gradient' rule")
        return relevance

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{self.name}({params})"


def positive(weight: np.ndarray) -> np.ndarray:
    return np.maximum(weight, 0)


def negative(weight: np.ndarray) -> np.ndarray:
    return np.minimum(weight, 0)


def signed_parts(b, xs):
    """x+ and x- of each input."""
    return [b.relu(x) for x in xs], [b.negative_part(x) for x in xs]


# A denominator that sums terms of one sign is 0 only where every term is 0, and its quotient only ever multiplies
# those terms (x_i * (W^T share)_i), so any finite quotient gives the exact relevance 0 there. Offsetting the sum by
# b.tiny in the terms' sign gives one: in fp32 (tiny = 1e-20) |z| above 4e-13 absorbs it exactly, so elsewhere the
# quotient is bitwise R / z, and a Conv or Gemm takes the offset in its bias: the guard costs no pass over the tensor
# (it took three: ==, Cast, +). Quotients stay finite for any |R| below 1e18 (builder.py: fp16's tiny).


def one_sign_sum(b, parts, sign: int, offset=0.0):
    """sign * b.tiny + offset + sum of layer.forward(b, xs) over the (layer, xs) parts, whose terms all have `sign`
    (as has offset: a scalar or an array in the layers' bias layout); None when every part is known to be zero."""
    total = None
    for layer, xs in parts:
        total = b.add(total, layer.forward(b, xs, offset=0.0 if total is not None else offset + sign * b.tiny))
    return total


def weigh(b, xs, transposed):
    """x_i * (W^T c)_i for each input: the last step of every LRP rule."""
    return [b.mul(x, g) for x, g in zip(xs, transposed)]


def weigh_transposed(b, xs, layer, share):
    """x_i * (W^T share)_i, without emitting the transpose at all when every x_i is known to be zero."""
    if all(x is None for x in xs):
        return [None] * len(xs)
    return weigh(b, xs, layer.transpose(b, share))


def add_each(b, *per_input):
    return [b.sum(terms) for terms in zip(*per_input)]


def constant_like(b, x: str, value) -> str:
    """A tensor shaped like one sample of x ([1, ...]) filled with `value`: a scalar, or one value per channel
    (axis 1). Layers read it with the batch broadcast, so the rule's extra forward passes run once, not per sample."""
    value = np.asarray(value, dtype=np.float32)
    if value.ndim:
        value = value.reshape(1, -1, *([1] * 2))  # per channel of an NCHW image
    sample_shape = b.concat([b.ints([1]), b.node("Shape", [x], start=1)], axis=0)
    return b.expand(b.const(value, "bound"), sample_shape)
