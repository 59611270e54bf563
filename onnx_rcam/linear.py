"""The views through which rules see the ops they serve.

A `LinearLayer` is y = sum_i W x_i + b for every linear op (Conv, Gemm, MatMul, pooling, residual joins): its
constant weight, its bias, and two emitters, `forward` (W x + a constant offset, not the layer's bias: a scalar, or
an array laid out as the bias is) and `transpose` (W^T g, one result per input).
A rule asks for the same layer with modified weights (`with_weight`) and never learns which op it serves. Ops whose
weights are implicit (pooling windows, joins) carry a 0-d weight 1 that modifiers scale: W+ = W, W- = 0.

A `NonlinearOp` is any other op on the path: the rule either passes relevance through or asks for the op's
vector-Jacobian product (`vjp`), e.g. MaxPool's winner-take-all routing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .builder import Builder

# (builder, inputs, weight, offset) -> W x + offset; emitters whose op has a bias input take the offset there.
ForwardEmitter = Callable[[Builder, list, "WeightRef", float], "str | None"]
TransposeEmitter = Callable[[Builder, str, "WeightRef"], list]


@dataclass
class WeightRef:
    """A weight array and, once emitted, the initializer holding it."""

    array: np.ndarray
    _names: dict = field(default_factory=dict)

    @property
    def is_zero(self) -> bool:
        return not np.any(self.array)

    def scalar(self) -> float:
        return float(self.array)

    def name(self, b: Builder, transform: Callable[[np.ndarray], np.ndarray] | None = None, key: str = "") -> str:
        """The initializer of this weight (or of transform(weight)), emitted once however often it is used."""
        if key not in self._names:
            value = self.array if transform is None else transform(self.array)
            self._names[key] = b.const(value, "weight")
        return self._names[key]


@dataclass
class LinearLayer:
    inputs: list[str]                 # the activations x_i
    output: str                       # the forward output tensor (W x + b) as the model computes it
    weight: WeightRef
    bias: np.ndarray | None
    emit_forward: ForwardEmitter
    emit_transpose: TransposeEmitter
    op: str = ""
    same_shape: bool = False          # every input has the output's shape: relevance may pass through unchanged
    offset_in_forward: bool = False   # emit_forward adds the offset itself (in a bias input, at no cost)

    def with_weight(self, array: np.ndarray) -> "LinearLayer":
        return replace(self, weight=WeightRef(np.asarray(array, dtype=np.float32)))

    def forward(self, b: Builder, xs: list, offset: float | np.ndarray = 0.0) -> str | None:
        """sum_i W x_i + offset, without the layer's bias; None for an all-zero weight or all-None inputs. offset: a
        scalar, or an array in the bias's layout (one value per output channel of a Conv or Gemm)."""
        if self.weight.is_zero or all(x is None for x in xs):
            return None
        if self.offset_in_forward:
            return self.emit_forward(b, xs, self.weight, offset)
        y = self.emit_forward(b, xs, self.weight, 0.0)
        return b.add(y, b.const(offset)) if np.any(offset) else y

    def transpose(self, b: Builder, g: str | None) -> list:
        """W^T g for each input."""
        if g is None or self.weight.is_zero:
            return [None] * len(self.inputs)
        return self.emit_transpose(b, g, self.weight)

    @property
    def has_bias(self) -> bool:
        return self.bias is not None and bool(np.any(self.bias))


@dataclass
class NonlinearOp:
    input: str
    output: str
    op: str
    same_shape: bool                                # whether passing relevance straight through is well-defined
    vjp: Callable[[Builder, str], str]              # the op's vector-Jacobian product at the forward point
