"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
CVPR Workshops 2020, Algorithm 1), run through onnxruntime: no gradient, one masked forward pass per channel.

For layer L with activation A (K channels) and explained class c: each channel, upsampled to the image (bilinear,
half-pixel, as the heads resize) and min-max normalised to [0, 1], masks the prepared image; the model scores each
masked image; the channel weights are the softmax over channels of the class-c scores (as pytorch-grad-cam, whose
scores are the model's outputs before any softmax); raw = sum_k w_k A_k; the map is ReLU, min-max, bilinear to the
image, as for the Grad-CAM family. The score is the model's first output: logits, or probabilities where the model
ends in a Softmax. K masked passes per image and layer: 2048 for ResNet50's layer4, so this is the slow method.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import RcamError
from .explainer import Explainer, Explanation, _session, run_batched
from .initial import SEED_INPUT, TARGET_INPUT
from .load import load


def bilinear_matrix(size_out: int, size_in: int) -> np.ndarray:
    """The [size_out, size_in] matrix of 1-D linear interpolation with half-pixel centres (ONNX Resize's linear
    mode, half_pixel; torch's align_corners=False): rows of the upsampled axis as weights of the input's."""
    centres = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    below = np.floor(centres).astype(int)
    above = np.minimum(below + 1, size_in - 1)
    matrix = np.zeros([size_out, size_in])
    np.add.at(matrix, (np.arange(size_out), below), 1 - (centres - below))
    np.add.at(matrix, (np.arange(size_out), above), centres - below)
    return matrix


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, half-pixel, of [..., h, w] to [..., H, W]."""
    rows, cols = bilinear_matrix(size[0], maps.shape[-2]), bilinear_matrix(size[1], maps.shape[-1])
    return np.einsum("Hh,...hw,Ww->...HW", rows, maps, cols)


def min_max(maps: np.ndarray) -> np.ndarray:
    """Each map of [..., h, w] into [0, 1]; a constant map gives 0."""
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)


class ScoreCamExplainer(Explainer):
    """Explainer(model)(images) with Score-CAM maps; `model` must be a plain (not augmented) classifier.

    batch_size: masked images per onnxruntime run. progress: called with the number of masked images after each run.
    """

    def __init__(self, model, layers=("auto",), device: str = "auto", batch_size: int = 32,
                 preprocessing=None, input_shape=None, progress: Callable[[int], None] | None = None,
                 threads: int | None = None):
        proto = load(model)
        if {TARGET_INPUT, SEED_INPUT} & {i.name for i in proto.graph.input}:
            raise RcamError("Score-CAM runs the plain model: pass the model before augmentation")
        if batch_size < 1:
            raise RcamError(f"batch_size must be at least 1, got {batch_size}")
        # The augmented model gives the activations and the explained classes in one run; the plain one scores.
        super().__init__(model, layers, device, preprocessing=preprocessing, input_shape=input_shape,
                         threads=threads)
        self.scorer = _session(proto, device, threads)[0]
        self.batch_size, self.progress = batch_size, progress

    @property
    def name(self) -> str:
        return "scorecam"

    def __call__(self, images, targets=None, extras: bool = False, regions=None, outputs: bool = False) -> Explanation:
        """As Explainer's, for classifiers only (regions and outputs are the other tasks')."""
        if regions is not None:
            raise RcamError("Score-CAM explains classifiers only: no regions")
        x = self.prepare(images)
        found = super().__call__(x, targets, extras=True)
        channels_last = self.preprocessing.layout == "NHWC"
        size = x.shape[1:3] if channels_last else x.shape[2:4]
        maps, raw = {}, {}
        for layer in self.layers:
            raw[layer] = np.stack([self._raw_map(x[n], found.activations[layer][n], int(found.classes[n]), size,
                                                 channels_last) for n in range(len(x))]).astype(np.float32)
            maps[layer] = upsample(min_max(np.maximum(raw[layer], 0)), size).astype(np.float32)
        explanation = Explanation(found.logits, found.classes, maps)
        if extras:
            explanation.raw, explanation.activations = raw, found.activations
        return explanation

    def _raw_map(self, image: np.ndarray, activation: np.ndarray, target: int, size, channels_last: bool):
        masks = min_max(upsample(activation.astype(np.float64), size)).astype(np.float32)
        masks = masks[..., None] if channels_last else masks[:, None]  # broadcast over the colour channels
        scores = []
        for start in range(0, len(masks), self.batch_size):
            masked = image[None] * masks[start:start + self.batch_size]
            scores.append(run_batched(self.scorer, {self.input.name: masked})[0][:, target])
            if self.progress:
                self.progress(len(masked))
        scores = np.concatenate(scores).astype(np.float64)
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        return np.tensordot(weights, activation.astype(np.float64), axes=1)
