"""Stage 5: the CAM computed from a layer's activation A and relevance R (DESIGN.md section 1)."""

from __future__ import annotations

from onnx import TensorProto

from .builder import Builder


def output_names(method: str, key: str) -> dict[str, str]:
    return {part: f"{method}/{key}/{part}" for part in ("map", "raw", "relevance", "activation")}


def relevance_cam(b: Builder, activation: str, relevance: str, shape: list, image_size: tuple[int, int],
                  names: dict[str, str], relu: bool = False, top_k: int = 1) -> None:
    """alpha_k = mean_hw R_k; raw = sum_k alpha_k A_k; map = min-max normalised raw, resized to the image.

    shape is A's [N, C, h, w]. With top_k > 1, R holds N * top_k rows (see batching.py), and the map, raw map and
    relevance come out as [N, top_k, ...].
    """
    batch, channels, height, width = shape
    with b.per_sample():
        b.identity(activation, out=b.claim(names["activation"]))
    b.add_output(names["activation"], TensorProto.FLOAT, [batch, channels, height, width])

    def publish(tensor: str, part: str, dims: list) -> str:
        if top_k == 1:
            b.add_output(names[part], TensorProto.FLOAT, [batch, *dims])
            return b.identity(tensor, out=b.claim(names[part]))
        b.add_output(names[part], TensorProto.FLOAT, [batch, top_k, *dims])
        return b.node("Reshape", [tensor, b.ints([-1, top_k, *dims])], out=b.claim(names[part]))

    publish(relevance, "relevance", [channels, height, width])
    alpha = b.scale(b.reduce_sum(relevance, [2, 3]), 1.0 / (height * width))
    raw = b.node("ReduceSum", [b.mul(alpha, activation), b.ints([1])], keepdims=0)
    publish(raw, "raw", [height, width])
    scored = b.relu(raw) if relu else raw
    low, high = b.reduce_min(scored, [1, 2]), b.reduce_max(scored, [1, 2])
    span = b.sub(high, low)
    varies = b.greater(span, b.const(0.0))
    # A constant map has no contrast to show: all zeros, never 0/0.
    normalised = b.where(varies, b.div(b.sub(scored, low), b.where(varies, span, b.const(1.0))), b.const(0.0))
    rows = b.node("Shape", [raw], end=1)
    sizes = b.concat([rows, b.ints([1, *image_size])], axis=0)
    upsampled = b.resize_linear(b.unsqueeze(normalised, [1]), sizes)
    publish(b.squeeze(upsampled, [1]), "map", list(image_size))
