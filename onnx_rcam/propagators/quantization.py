"""QuantizeLinear -> DequantizeLinear on activations, as onnxruntime's QDQ quantizer writes INT8 models.

The pair rounds x to the grid of the quantized type and saturates at its ends: a ReLU or ReLU6 that the quantizer
removed lives on as that saturation. LRP passes relevance through the pair, as through any activation; the
gradient is the straight-through estimate (Bengio et al. 2013), 1 where x lies inside the representable range and 0
where it saturates. Weights need none of this: canonicalize folds DequantizeLinear of a constant into a float
constant. The generated nodes read the dequantized activations the model computes.
"""

from __future__ import annotations

import numpy as np

from ..deployed import per_axis
from . import Context, like_first_input, register, unsupported
from .common import constant_input, required_constant, static_shape
from .elementwise import _nonlinear


def _integer_range(node, zero_point: np.ndarray | None) -> tuple[int, int]:
    """The least and greatest value of the quantized type (uint8 when the zero point is omitted)."""
    info = np.iinfo(zero_point.dtype if zero_point is not None else np.uint8)
    return info.min, info.max


def _quantization_parameters(node) -> tuple[np.ndarray, np.ndarray | None]:
    """The node's constant scale and zero point (None when omitted); a clear error for anything else."""
    if node.attrs.get("block_size", 0):
        raise unsupported(node, "blocked quantization (block_size) is not supported; quantize per tensor or per "
                                "channel")
    scale = required_constant(node, 1, "quantization scale")
    if len(node.inputs) > 2 and node.inputs[2].name:
        return scale, required_constant(node, 2, "zero point")
    return scale, None


@register("QuantizeLinear", sign=like_first_input)
def quantize(ctx: Context, node, relevance):
    x = node.inputs[0].name
    scale, zero_point = _quantization_parameters(node)
    rank = len(static_shape(node.inputs[0]))
    low, high = _integer_range(node, zero_point)
    axis = node.attrs.get("axis", 1)
    offset = per_axis(zero_point if zero_point is not None else np.zeros(1), axis, rank)
    step = per_axis(scale, axis, rank)
    # x saturates outside [(q_min - zero point) * scale, (q_max - zero point) * scale].
    lowest, highest = (low - offset) * step, (high - offset) * step

    def inside_range(b, r):
        above = b.greater_or_equal(x, b.const(lowest.astype(np.float32), "quant_low"))
        below = b.node("LessOrEqual", [x, b.const(highest.astype(np.float32), "quant_high")])
        return b.where(b.and_(above, below), r, b.const(0.0))

    return [*_nonlinear(ctx, node, relevance, inside_range), None, None][:len(node.inputs)]


def _dequantized_sign(node, is_nonnegative) -> bool:
    """(q - zero point) * scale >= 0 when q came from a non-negative x, or when no code lies below the zero point
    (uint8 with zero point 0, int8 with -128: what the quantizer picks for a ReLU's output)."""
    zero_point, scale = constant_input(node, 2), constant_input(node, 1)
    if scale is None or np.any(scale < 0):
        return False
    low = _integer_range(node, zero_point)[0]
    floor = zero_point if zero_point is not None else np.zeros(1)
    return is_nonnegative(node.inputs[0]) or bool(np.all(floor.astype(np.int64) <= low))


@register("DequantizeLinear", sign=_dequantized_sign)
def dequantize(ctx: Context, node, relevance):
    _quantization_parameters(node)
    return [*_nonlinear(ctx, node, relevance, lambda b, r: r), None, None][:len(node.inputs)]
