"""Stage 5: the CAM computed from a layer's activation A and relevance R (DESIGN.md section 1)."""

from __future__ import annotations

from .builder import Builder


def output_names(method: str, key: str) -> dict[str, str]:
    return {part: f"{method}/{key}/{part}" for part in ("map", "raw", "relevance", "activation")}


def relevance_cam(b: Builder, activation: str, relevance: str, spatial: tuple[int, int],
                  image_size: tuple[int, int], names: dict[str, str], relu: bool = False) -> None:
    """alpha_k = mean_hw R_k; raw = sum_k alpha_k A_k; map = min-max normalised raw, resized to the image."""
    b.identity(activation, out=b.claim(names["activation"]))
    b.identity(relevance, out=b.claim(names["relevance"]))
    alpha = b.scale(b.reduce_sum(relevance, [2, 3]), 1.0 / (spatial[0] * spatial[1]))
    raw = b.node("ReduceSum", [b.mul(alpha, activation), b.ints([1])], keepdims=0, out=b.claim(names["raw"]))
    scored = b.relu(raw) if relu else raw
    low, high = b.reduce_min(scored, [1, 2]), b.reduce_max(scored, [1, 2])
    span = b.sub(high, low)
    varies = b.greater(span, b.const(0.0))
    # A constant map has no contrast to show: all zeros, never 0/0.
    normalised = b.where(varies, b.div(b.sub(scored, low), b.where(varies, span, b.const(1.0))), b.const(0.0))
    batch = b.node("Shape", [raw], end=1)
    sizes = b.concat([batch, b.ints([1, *image_size])], axis=0)
    upsampled = b.resize_linear(b.unsqueeze(normalised, [1]), sizes)
    b.squeeze(upsampled, [1], out=b.claim(names["map"]))

