"""Resize (and Upsample, which loading upgrades to Resize): a linear map of each channel's grid, its exact adjoint.

Nearest and linear resizing act on each spatial axis separately: Y = A_h X A_w^T per channel, with A_h and A_w
interpolation matrices of non-negative weights. onnxruntime itself computes them at augment time, by resizing an
identity along one axis with the node's own attributes (coordinate mode, nearest mode, roi, antialias...), so every
mode an exporter writes is the forward's exact mode. The transpose is then two MatMuls: A_h^T R A_w. LRP treats
the op as a pool (proportional redistribution over the input pixels each output pixel reads).
"""

from __future__ import annotations

import numpy as np

from ..linear import LinearLayer
from . import Context, like_first_input, register, unsupported
from .common import constant_input, spatial_sizes, static_shape
from .pooling import UNIT, run_single_op

SEPARABLE_MODES = ("nearest", "linear")


@register("Resize", sign=like_first_input)
def resize(ctx: Context, node, relevance):
    x, y = node.inputs[0], node.outputs[0]
    mode = node.attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in SEPARABLE_MODES:
        raise unsupported(node, f"mode {mode!r}: only nearest and linear resizing are supported")
    rank = len(static_shape(x))
    axes = [int(a) % rank for a in node.attrs.get("axes", range(rank))] if rank else []
    if rank != 4 or not {2, 3} <= set(axes):
        raise unsupported(node, "only a Resize of the spatial axes of an [N, C, H, W] tensor is supported")
    roi, scales = constant_input(node, 1), constant_input(node, 2)
    if len(node.inputs) > 2 and node.inputs[2].name and scales is None:
        raise unsupported(node, "its scales are computed at run time; only constant scales are supported (sizes "
                                "may be computed)")
    if scales is not None and scales.size and not all(scales[i] == 1 for i, a in enumerate(axes) if a < 2):
        raise unsupported(node, "it resizes the batch or channel axis")
    in_sizes, out_sizes = spatial_sizes(x), spatial_sizes(y)
    position = {a: i for i, a in enumerate(axes)}  # roi, scales and sizes list the Resize's axes only
    matrices = [_interpolation_matrix(
        node, axis, in_sizes[axis - 2], out_sizes[axis - 2],
        None if roi is None or not roi.size else (float(roi[position[axis]]), float(roi[len(axes) + position[axis]])),
        None if scales is None or not scales.size else float(scales[position[axis]])) for axis in (2, 3)]

    def forward(b, xs, w, offset):
        # The node's own roi, scales and sizes: constants, or tensors that the model computes.
        return b.scale(b.node("Resize", [xs[0], *[t.name for t in node.inputs[1:]]], **node.attrs), w.scalar())

    def transpose(b, g, w):
        # Y = A_h X A_w^T, so the adjoint of R is A_h^T R A_w.
        across = b.matmul(b.scale(g, w.scalar()), b.const(matrices[1], "resize_columns"))
        return [b.matmul(b.const(np.ascontiguousarray(matrices[0].T), "resize_rows"), across)]

    layer = LinearLayer([x.name], y.name, UNIT, None, forward, transpose, op=node.op, same_shape=False)
    return [*ctx.rule(node).linear(ctx.builder, layer, relevance[0]), None, None, None][:len(node.inputs)]


def _interpolation_matrix(node, axis: int, size: int, out_size: int, roi, scale) -> np.ndarray:
    """A [out_size, size] with Resize(x) = A x along `axis`: the node's Resize of an identity, one unit per sample."""
    identity = np.moveaxis(np.eye(size, dtype=np.float32).reshape(size, size, 1, 1), 1, axis)  # unit k in sample k
    attrs = {k: v for k, v in node.attrs.items() if k != "axes"}
    roi_input = None
    if roi is not None:
        starts, ends = [0.0] * 4, [1.0] * 4
        starts[axis], ends[axis] = roi
        roi_input = np.array(starts + ends, dtype=np.float32)
    if scale is not None:
        factors = [1.0] * 4
        factors[axis] = scale
        inputs = [roi_input, np.array(factors, dtype=np.float32)]
    else:
        wanted = list(identity.shape)
        wanted[axis] = out_size
        inputs = [roi_input, None, np.array(wanted, dtype=np.int64)]
    resized = run_single_op("Resize", attrs, identity, inputs)
    if resized.shape[axis] != out_size:
        raise unsupported(node, f"resizing an identity along axis {axis} gave {resized.shape[axis]} positions, the "
                                f"model {out_size}")
    matrix = np.moveaxis(resized, axis, 1).reshape(size, out_size)  # [k, i] = A[i, k]
    return np.ascontiguousarray(matrix.T.astype(np.float32))
