"""Structural ops: relevance goes back where the values came from, under every rule."""

from __future__ import annotations

import numpy as np

from . import Context, like_all_inputs, like_first_input, register, unsupported
from .common import constant_input, static_shape


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze", sign=like_first_input)
def reshape(ctx: Context, node, relevance):
    b = ctx.builder
    return [None if relevance[0] is None else b.reshape_like(relevance[0], node.inputs[0].name)]


@register("Transpose", sign=like_first_input)
def transpose(ctx: Context, node, relevance):
    rank = len(static_shape(node.inputs[0]))
    perm = node.attrs.get("perm", list(reversed(range(rank))))
    return [None if relevance[0] is None else ctx.builder.transpose(relevance[0], np.argsort(perm).tolist())]


def _pad_sign(node, is_nonnegative) -> bool:
    has_fill = len(node.inputs) > 2 and node.inputs[2].name
    return is_nonnegative(node.inputs[0]) and (not has_fill or is_nonnegative(node.inputs[2]))


@register("Pad", sign=_pad_sign)
def pad(ctx: Context, node, relevance):
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = constant_input(node, 1)
    if mode != "constant" or pads is None or np.any(pads < 0):
        raise unsupported(node, "only constant-mode Pad with constant, non-negative pads is supported")
    rank = len(static_shape(node.inputs[0]))
    axes = constant_input(node, 3)
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    half = len(pads) // 2
    starts = [int(p) for p in pads[:half]]
    # A negative end counts from the back; "to the end" needs the largest index instead of -0.
    ends = [-int(p) if p else np.iinfo(np.int64).max for p in pads[half:]]
    r = relevance[0]
    return [None if r is None else ctx.builder.slice(r, starts, ends, axes)]


@register("Concat", sign=like_all_inputs)
def concat(ctx: Context, node, relevance):
    rank = len(static_shape(node.outputs[0]))
    axis = node.attrs["axis"] % rank
    sizes = [static_shape(t)[axis] for t in node.inputs]
    if not all(isinstance(s, int) for s in sizes):
        raise unsupported(node, f"it concatenates along axis {axis}, whose sizes {sizes} are not all static")
    r = relevance[0]
    if r is None:
        return [None] * len(sizes)
    offsets = np.cumsum([0] + sizes)
    return [ctx.builder.slice(r, [int(start)], [int(end)], [axis]) for start, end in zip(offsets, offsets[1:])]
