"""Helpers shared by propagators: static shapes and the exact transpose of a strided window op."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import Builder
from ..canonicalize import constant_value
from ..errors import ModelError
from ..linear import WeightRef
from . import unsupported


def static_shape(tensor: gs.Tensor) -> list:
    return list(tensor.shape) if tensor.shape is not None else []


def target_shape(b, target: gs.Tensor, source: gs.Tensor, batch: int) -> str:
    """target's shape, for reshaping (batch=0: copy the first dim) or expanding (batch=1: keep it) relevance shaped
    like `source` back to target. A constant where target's dims past the first are static and its first is
    source's: shape inference then keeps the batch symbol through the generated graph, so that onnxruntime's
    NCHWc layout can prove relevance and activations equal in shape and multiply them without reordering either.
    Shape(target) at run time otherwise."""
    dims, lead = static_shape(target), static_shape(source)[:1]
    if dims and lead and dims[0] == lead[0] and all(isinstance(d, int) for d in dims[1:]):
        return b.ints([batch, *dims[1:]])
    return b.shape(target.name)


def keeps_shape(inputs, output) -> bool:
    """Whether every input has exactly the output's (static) shape."""
    shape = static_shape(output)
    return bool(shape) and all(static_shape(t) == shape for t in inputs)


def spatial_sizes(tensor: gs.Tensor) -> list[int]:
    sizes = static_shape(tensor)[2:]
    if not sizes or not all(isinstance(s, int) for s in sizes):
        raise ModelError(f"tensor {tensor.name!r} has shape {tensor.shape}: its spatial sizes must be static numbers")
    return sizes


def window_attrs(node: gs.Node, kernel: list[int]) -> dict:
    """Explicit strides, dilations and pads of a Conv/pool node, auto_pad resolved against the static input shape."""
    rank = len(kernel)
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = spatial_sizes(node.inputs[0])
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0] * (2 * rank)
    else:
        pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    return {"kernel_shape": list(kernel), "strides": strides, "dilations": dilations, "pads": pads}


def transposed_conv_attrs(node: gs.Node, kernel: list[int], in_sizes: list[int], out_sizes: list[int]) -> dict:
    """Explicit kernel_shape, strides, dilations, pads and output_padding of a ConvTranspose node, with output_shape
    and auto_pad resolved against the static shapes: the output is the full transposed convolution, of size
    s * (in - 1) + output_padding + (k - 1) * d + 1, cropped by pads. Where output_shape or SAME_* fix the output
    size, the ONNX spec splits the crop as onnxruntime does: the odd row at the end for SAME_UPPER, at the start
    otherwise."""
    rank = len(kernel)
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    output_padding = list(node.attrs.get("output_padding", [0] * rank))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER") or "output_shape" in node.attrs:
        totals = [s * (size - 1) + p + (k - 1) * d + 1 - out
                  for size, out, k, s, d, p in zip(in_sizes, out_sizes, kernel, strides, dilations, output_padding)]
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = begins + [t - begin for t, begin in zip(totals, begins)]
    else:
        pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    full = [s * (size - 1) + p + (k - 1) * d + 1
            for size, k, s, d, p in zip(in_sizes, kernel, strides, dilations, output_padding)]
    if min(pads) < 0 or [f - b - e for f, b, e in zip(full, pads[:rank], pads[rank:])] != out_sizes:
        raise unsupported(node, f"its output {out_sizes} is not its full transposed convolution {full} cropped by "
                                f"non-negative pads {pads}")
    return {"kernel_shape": list(kernel), "strides": strides, "dilations": dilations, "pads": pads,
            "output_padding": output_padding}


def transpose_window_op(b: Builder, g: str, weight: WeightRef, attrs: dict, group: int, in_sizes: list[int],
                        out_sizes: list[int]) -> str:
    """The exact adjoint of a strided window op (Conv, or a pool as a depthwise Conv), sized to the input.

    With stride 1 it is a Conv with the kernel flipped and each group's in/out channels swapped, which onnxruntime
    runs about twice as fast as ConvTranspose (its blocked NCHWc kernels); otherwise a ConvTranspose with the very
    same weight, cropped or padded to the input's size.
    """
    rank = len(in_sizes)
    begins = attrs["pads"][:rank]
    reaches = [(k - 1) * d for k, d in zip(attrs["kernel_shape"], attrs["dilations"])]
    conv_begins = [reach - begin for reach, begin in zip(reaches, begins)]
    conv_ends = [size - out + begin for size, out, begin in zip(in_sizes, out_sizes, begins)]
    if all(s == 1 for s in attrs["strides"]) and min(conv_begins + conv_ends) >= 0:
        adjoint = weight.name(b, lambda array: adjoint_kernel(array, group), key="adjoint")
        return b.conv(g, adjoint, kernel_shape=attrs["kernel_shape"], dilations=attrs["dilations"],
                      pads=conv_begins + conv_ends, group=group)
    end_pads, output_padding = [], []
    for size, out, k, s, d, begin in zip(in_sizes, out_sizes, attrs["kernel_shape"], attrs["strides"],
                                         attrs["dilations"], begins):
        reach = (out - 1) * s + (k - 1) * d + 1 - begin  # last input position a window touches, plus one
        end_pads.append(max(reach - size, 0))
        output_padding.append(max(size - reach, 0))
    return b.conv_transpose(g, weight.name(b), kernel_shape=attrs["kernel_shape"], strides=attrs["strides"],
                            dilations=attrs["dilations"], pads=begins + end_pads, group=group,
                            output_padding=output_padding)


def adjoint_kernel(weight: np.ndarray, group: int) -> np.ndarray:
    """The Conv kernel [C_in, C_out / group, *k] whose stride-1 Conv is the adjoint of `weight`'s
    [C_out, C_in / group, *k]: each group's two channel axes swapped, the window flipped."""
    out_channels, in_per_group, *kernel = weight.shape
    swapped = weight.reshape(group, out_channels // group, in_per_group, *kernel).swapaxes(1, 2)
    swapped = swapped.reshape(group * in_per_group, out_channels // group, *kernel)
    return np.ascontiguousarray(np.flip(swapped, axis=tuple(range(2, swapped.ndim))))


def produced_by(tensor: gs.Tensor, ops, carriers) -> bool:
    """Whether the tensor is the output of one of `ops`, possibly passed since through `carriers` (ops that only move
    or re-encode its values: reshapes, casts, quantization)."""
    while tensor.inputs:
        producer = tensor.inputs[0]
        if producer.op in ops:
            return True
        if producer.op not in carriers:
            return False
        tensor = producer.inputs[0]
    return False


def required_constant(node: gs.Node, index: int, what: str) -> np.ndarray:
    """Input `index` of `node`, which must be a constant; otherwise a clear error naming it (`what`, e.g. "slope")."""
    value = constant_input(node, index)
    if value is None:
        raise unsupported(node, f"its {what} is computed at run time; only a constant {what} is supported")
    return value


def constant_input(node: gs.Node, index: int) -> np.ndarray | None:
    if len(node.inputs) <= index or node.inputs[index].name == "":
        return None
    return constant_value(node.inputs[index])
