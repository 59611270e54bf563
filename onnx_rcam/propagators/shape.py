"""Structural ops: relevance goes back where the values came from, under every rule."""

from __future__ import annotations

import numpy as np

from . import Context, like_all_inputs, like_first_input, register, unsupported
from ..canonicalize import is_activation
from .common import constant_input, static_shape, target_shape
from .elementwise import unbroadcast


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze", sign=like_first_input)
def reshape(ctx: Context, node, relevance):
    b = ctx.builder
    if relevance[0] is None:
        return [None]
    return [b.reshape(relevance[0], target_shape(b, node.inputs[0], node.outputs[0], 0))]


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


@register("Split", sign=like_first_input)
def split(ctx: Context, node, relevance):
    """The parts' relevance concatenated back; a part that no relevance reaches contributes zeros of its shape."""
    b = ctx.builder
    axis = node.attrs.get("axis", 0)
    parts = [r if r is not None else b.zeros(b.shape(part.name))
             for r, part in zip(relevance, node.outputs)]
    return [b.concat(parts, axis)] + [None] * (len(node.inputs) - 1)


@register("Slice", sign=like_first_input)
def slice_(ctx: Context, node, relevance):
    """Relevance back to the sliced positions, zero elsewhere: zero padding for unit steps, a scatter otherwise."""
    shape = static_shape(node.inputs[0])
    rank = len(shape)
    starts, ends, axes, steps = (constant_input(node, i) for i in range(1, 5))
    optional_given = [i < len(node.inputs) and node.inputs[i].name != "" for i in (3, 4)]
    if starts is None or ends is None or (optional_given[0] and axes is None) or (optional_given[1] and steps is None):
        raise unsupported(node, "its starts, ends, axes or steps are computed at run time; only constant ones are "
                                "supported")
    axes = range(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    b, r = ctx.builder, relevance[0]
    pads = [0] * (2 * rank)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis, size = _static_axis(node, shape, int(axis))
        positions = range(*slice(int(start), int(end), int(step)).indices(size))
        if positions.step == 1:
            pads[axis], pads[rank + axis] = positions.start, size - max(positions.stop, positions.start)
        else:
            r = _scatter(b, r, rank, axis, list(positions), size)
    if any(pads):
        r = b.node("Pad", [r, b.ints(pads)], mode="constant")
    return [r] + [None] * (len(node.inputs) - 1)


@register("Gather", sign=like_first_input)
def gather(ctx: Context, node, relevance):
    """Gather of constant indices along an axis: each gathered slice's relevance goes back to its position (added up
    where an index repeats)."""
    indices = constant_input(node, 1)
    if indices is None:
        raise unsupported(node, "its indices are computed at run time; only constant indices are supported")
    shape = static_shape(node.inputs[0])
    axis, size = _static_axis(node, shape, node.attrs.get("axis", 0))
    b, r = ctx.builder, relevance[0]
    # The indices' axes (none for a scalar index) become one axis holding every gathered slice, in order.
    one_axis = b.concat([b.node("Shape", [r], end=axis), b.ints([-1]), b.node("Shape", [r], start=axis + indices.ndim)],
                        axis=0)
    positions = indices.reshape(-1).tolist()  # negative ones count from the end, for ScatterElements as for Gather
    return [_scatter(b, b.reshape(r, one_axis), len(shape), axis, positions, size), None]


def _static_axis(node, shape: list, axis: int) -> tuple[int, int]:
    """The axis counted from the front, and its size, which must be static."""
    size = shape[axis] if -len(shape) <= axis < len(shape) else None
    if not isinstance(size, int):
        raise unsupported(node, f"it indexes axis {axis} of shape {shape or 'unknown'}, whose size is not static")
    return axis % len(shape), size


def _scatter(b, r: str, rank: int, axis: int, positions: list[int], size: int) -> str:
    """A zero tensor `size` long along `axis`, with r's slices along it added at `positions`."""
    widened = b.concat([b.node("Shape", [r], end=axis), b.ints([size]), b.node("Shape", [r], start=axis + 1)], axis=0)
    index_shape = [1] * rank
    index_shape[axis] = len(positions)
    indices = b.expand(b.ints(np.reshape(positions, index_shape)), b.shape(r))
    return b.node("ScatterElements", [b.zeros(widened), indices, r], axis=axis, reduction="add")


def _where_sign(node, is_nonnegative) -> bool:
    return all(is_nonnegative(t) for t in node.inputs[1:])


@register("Where", sign=_where_sign)
def where(ctx: Context, node, relevance):
    """Where(condition, a, b): each element's relevance goes to the branch its value came from, under every rule
    (dynamo writes Softplus as Where(x > 20, x, softplus(x))). The condition gets none."""
    b, r = ctx.builder, relevance[0]
    if r is None:
        return [None, None, None]
    condition, output = node.inputs[0].name, node.outputs[0]
    zero = b.const(0.0)
    chosen = [b.where(condition, r, zero), b.where(condition, zero, r)]
    return [None] + [unbroadcast(b, branch, output, part) if is_activation(branch) else None
                     for branch, part in zip(node.inputs[1:], chosen)]
