"""Stage 5: the CAMs computed from a layer's activation A and the signal the sweep brought there: the relevance R
(Relevance-CAM, docs/design.md section 1) or the gradient G of the class score (the Grad-CAM family).

Each method is a raw map, signed, [rows, h, w]; the map is its per-sample min-max normalisation (after a ReLU where
the method asks for one), resized to the image. Sums over h, w are per channel k; the formulas' sources:
- rcam: Lee et al., "Relevance-CAM", CVPR 2021: w_k = mean_hw R_k, no ReLU unless asked for.
- lrp: the LRP heatmap, raw = sum_k R_k, ReLU (its positive evidence); at layer `input` the input-level heatmap
  (Bach et al., "On Pixel-Wise Explanations ... by Layer-Wise Relevance Propagation", PLoS ONE 2015).
- gradcam: Selvaraju et al., "Grad-CAM", ICCV 2017, eq. 1-2: w_k = mean_hw G_k, ReLU.
- gradcampp: Chattopadhay et al., "Grad-CAM++", WACV 2018, the closed form for the exponential score: alpha = G^2 /
  (2 G^2 + S_k G^3), S_k = sum_hw A_k, w_k = sum_hw alpha ReLU(G_k), ReLU. Cancelling G^2 (alpha only counts where
  G > 0) gives w_k = sum_hw ReLU(G_k) / (2 + S_k G_k), which has no 0/0; the paper's factor exp(score) is a positive
  constant per sample that normalisation removes, and is left out (as pytorch-grad-cam does).
- xgradcam: Fu et al., "Axiom-based Grad-CAM", BMVC 2020: w_k = sum_hw (A_k / sum_hw A_k) G_k, ReLU.
- layercam: Jiang et al., "LayerCAM", IEEE TIP 2021: raw = sum_k ReLU(G_k) * A_k element-wise, ReLU.
- hirescam: Draelos and Carin, "Use HiResCAM instead of Grad-CAM", 2020: raw = sum_k G_k * A_k
  element-wise, ReLU.

Relevance candidates (issue 15: can a map from the same relevance beat the paper's head?). Under z+ a unit's
relevance is its activation times a modified gradient, R_k = A_k * c_k with c_k = W+^T (R / z) (Montavon et al.
2019, section 10.2.3), so R is already element-wise and already weighted by A:
- lrp (above) is sum_k A_k c_k: the relevance analogue of HiResCAM's sum_k A_k G_k.
- lrp-pos: raw = sum_k ReLU(R_k), each unit's positive evidence only, before negative units of other channels
  cancel it: the analogue of LayerCAM's sum_k ReLU(G_k) A_k (for A >= 0, ReLU(R_k) = A_k ReLU(c_k)). ReLU.
- rcam-pos: w_k = mean_hw ReLU(R_k), raw = sum_k w_k A_k, ReLU: the paper's channel weighting from the positive
  relevance only, as Grad-CAM++ weighs by ReLU(G_k); no channel gets a negative weight, so the map has no signed
  background of about 0.5 (reports/relevance-cam-comparison.md).
- rcam-elem: raw = sum_k ReLU(R_k A_k) / mean_hw |A_k| (0 for a channel whose activation is 0 everywhere), ReLU:
  the element-wise Relevance-CAM of issue 15, R_k A_k in place of the paper's mean_hw(R_k) A_k, as HiResCAM puts
  G_k A_k in place of Grad-CAM's. R_k holds A_k already, so R_k A_k counts the activation twice; dividing by the
  channel's mean |A_k| keeps the second factor a relative one (how much more active the unit is than its channel's
  average) and the map in relevance units, so channels of large activation scale do not take it over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .builder import Builder
from .errors import RcamError


FUSED_KEY = "fused"  # the layer key of the maps fused over the layers (augment's fuse); no layer may take it


@dataclass(frozen=True)
class Method:
    name: str
    signal: str            # "relevance": the LRP sweep's; "gradient": the chain rule's, from the explained score(s)
    raw: Callable[[Builder, str, str, int], str]  # (b, A, signal, h * w) -> the raw map [rows, h, w]
    relu: bool             # ReLU before normalising (rcam leaves it to the caller)


def _channel_sum(b: Builder, x: str) -> str:
    """sum_k x_k: [rows, C, h, w] -> [rows, h, w]."""
    return b.node("ReduceSum", [x, b.ints([1])], keepdims=0)


def _weighted_sum(b: Builder, weights: str, activation: str) -> str:
    """sum_k w_k A_k, for weights per channel [rows, C, 1, 1] or per unit [rows, C, h, w]."""
    return _channel_sum(b, b.mul(weights, activation))


def _mean_weighted(b, activation, signal, area):
    return _weighted_sum(b, b.scale(b.reduce_sum(signal, [2, 3]), 1.0 / area), activation)


def _relevance_sum(b, activation, relevance, area):
    return _channel_sum(b, relevance)


def _positive_relevance_sum(b, activation, relevance, area):
    return _channel_sum(b, b.relu(relevance))


def _positive_mean_weighted(b, activation, relevance, area):
    return _mean_weighted(b, activation, b.relu(relevance), area)


def _elementwise_relevance(b, activation, relevance, area):
    mean_magnitude = b.scale(b.reduce_sum(b.node("Abs", [activation]), [2, 3]), 1.0 / area)
    return _channel_sum(b, b.div_or_zero(b.relu(b.mul(relevance, activation)), mean_magnitude))


def _gradcampp(b, activation, gradient, area):
    # In float64: where activations are signed (the formula assumes ReLU outputs), 2 + S_k G can cancel to near 0,
    # and fp32 rounding of S_k then moved the raw map by 1.6e-4 of its maximum (tests/test_heads.py, MobileNetV3).
    activation64, gradient64 = b.cast(activation, TensorProto.DOUBLE), b.cast(gradient, TensorProto.DOUBLE)
    activation_sums = b.reduce_sum(activation64, [2, 3])
    denominator = b.add(b.const(2.0, dtype=np.float64), b.mul(activation_sums, gradient64))
    # Only G > 0 counts, and there the denominator is 2 + S_k G: zero only where S_k G = -2 exactly.
    stabilized = b.stabilize(denominator, 1e-12, dtype=np.float64)
    weights = b.reduce_sum(b.div(b.relu(gradient64), stabilized), [2, 3])
    return _weighted_sum(b, b.cast(weights, b.float_type), activation)


def _xgradcam(b, activation, gradient, area):
    weights = b.div_or_zero(b.reduce_sum(b.mul(activation, gradient), [2, 3]), b.reduce_sum(activation, [2, 3]))
    return _weighted_sum(b, weights, activation)


def _layercam(b, activation, gradient, area):
    return _weighted_sum(b, b.relu(gradient), activation)


def _hirescam(b, activation, gradient, area):
    return _weighted_sum(b, gradient, activation)


METHODS = {m.name: m for m in (
    Method("rcam", "relevance", _mean_weighted, relu=False),
    Method("lrp", "relevance", _relevance_sum, relu=True),
    Method("lrp-pos", "relevance", _positive_relevance_sum, relu=True),
    Method("rcam-pos", "relevance", _positive_mean_weighted, relu=True),
    Method("rcam-elem", "relevance", _elementwise_relevance, relu=True),
    Method("gradcam", "gradient", _mean_weighted, relu=True),
    Method("gradcampp", "gradient", _gradcampp, relu=True),
    Method("xgradcam", "gradient", _xgradcam, relu=True),
    Method("layercam", "gradient", _layercam, relu=True),
    Method("hirescam", "gradient", _hirescam, relu=True),
)}


def resolve_methods(names) -> list[Method]:
    """The methods named, in the order given, each once."""
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise RcamError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not names:
        raise RcamError(f"no method given; choose from {', '.join(METHODS)}")
    return [METHODS[n] for n in dict.fromkeys(names)]


def grid_view(b: Builder, tensor: str, grid) -> str:
    """A token or channels-last layer (select.TokenGrid) as the [N, D, h, w] image of its grid: [N, h, w, D]
    transposed; of [N, T, D] tokens, the first `prefix` (class, distillation, register) dropped and the rest laid
    out row by row (docs/design.md section 6)."""
    if grid.channels_last:
        return b.transpose(tensor, [0, 3, 1, 2])
    patches = b.slice(tensor, [grid.prefix], [np.iinfo(np.int64).max], [1])
    return b.reshape(b.transpose(patches, [0, 2, 1]), b.ints([0, -1, grid.height, grid.width]))


def output_names(method: Method, key: str) -> dict[str, str]:
    """method/key/part for the parts map, raw, activation, and the signal (relevance or gradient)."""
    return {part: f"{method.name}/{key}/{part}" for part in ("map", "raw", method.signal, "activation")}


def _publish(b: Builder, tensor: str, name: str, batch, top_k: int, dims: list) -> str:
    """Output `name`: tensor's rows [N * top_k, *dims] as float32 [N, *dims], or [N, top_k, *dims] with top-k."""
    if top_k == 1:
        b.add_output(name, TensorProto.FLOAT, [batch, *dims])
        return b.as_float32(tensor, out=b.claim(name))
    b.add_output(name, TensorProto.FLOAT, [batch, top_k, *dims])
    return b.as_float32(b.node("Reshape", [tensor, b.ints([-1, top_k, *dims])]), out=b.claim(name))


def _min_max(b: Builder, x: str) -> str:
    """Each row of x [rows, H, W] into [0, 1]; a constant row has no contrast to show: all zeros, never 0/0."""
    low, high = b.reduce_min(x, [1, 2]), b.reduce_max(x, [1, 2])
    span = b.sub(high, low)
    varies = b.greater(span, b.const(0.0))
    return b.where(varies, b.div(b.sub(x, low), b.where(varies, span, b.const(1.0))), b.const(0.0))


def cam(b: Builder, method: Method, activation: str, signal: str, shape: list, image_size: tuple[int, int],
        key: str, relu: bool = False, top_k: int = 1, shown: str | None = None) -> str:
    """Emit `method`'s outputs for one layer, and return its map's rows [N * top_k, H, W] (for fuse). relu: clip
    rcam's raw map at 0 before normalising.

    shape is A's [N, C, h, w]. With top_k > 1, the signal holds N * top_k rows (see batching.py), and the map, raw
    map and signal come out as [N, top_k, ...]. shown: what the activation output holds, computed per sample, where
    it is not A itself (a token layer's patch image).
    """
    names = output_names(method, key)
    batch, channels, height, width = shape
    with b.per_sample():
        b.as_float32(shown or activation, out=b.claim(names["activation"]))
    b.add_output(names["activation"], TensorProto.FLOAT, [batch, channels, height, width])
    _publish(b, signal, names[method.signal], batch, top_k, [channels, height, width])
    raw = method.raw(b, activation, signal, height * width)
    _publish(b, raw, names["raw"], batch, top_k, [height, width])
    normalised = _min_max(b, b.relu(raw) if relu or method.relu else raw)
    rows = b.node("Shape", [raw], end=1)
    sizes = b.concat([rows, b.ints([1, *image_size])], axis=0)
    upsampled = b.squeeze(b.resize_linear(b.unsqueeze(normalised, [1]), sizes), [1])
    _publish(b, upsampled, names["map"], batch, top_k, list(image_size))
    return upsampled


def fused_map(b: Builder, method: Method, maps: list[str], batch, image_size: tuple[int, int],
              top_k: int = 1) -> None:
    """Emit method/fused/map: the min-max normalisation of the mean of the layers' maps (each already at the
    image's size and in [0, 1]), as pytorch-grad-cam combines several target layers."""
    mean = b.scale(b.sum(maps), 1.0 / len(maps))
    _publish(b, _min_max(b, mean), f"{method.name}/{FUSED_KEY}/map", batch, top_k, list(image_size))
