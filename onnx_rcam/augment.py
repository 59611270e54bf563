"""The pipeline: load -> canonicalize -> select -> sweep -> heads -> export."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import onnx

from . import rules
from .batching import repeat_forward_reads
from .builder import Builder
from .canonicalize import canonicalize
from .errors import LayerSelectionError, RcamError
from .export import assemble, drift_note, record_layers, verify_runs
from .forward_copies import forward_tensors, materialize
from .fusion import protect_fusions
from .heads import FUSED_KEY, cam, fused_map, grid_view, resolve_methods
from .initial import INITIAL_KINDS, explained_onehot, initial_relevance, seeded
from .precision import cast_forward_reads
from .load import default_opset, fix_input_shape, infer_shapes, load
from .propagators import nonnegative_tensors
from .images import IMAGENET_BOUNDS
from .select import Candidate, Target, candidates, image_readers, region, resolve
from .sweep import sweep


@dataclass
class Augmented:
    model: onnx.ModelProto
    targets: list[Target]
    outputs: list[tuple[str, int, list]]   # (name, elem_type, shape) of each added output
    logits: str
    drift: float = 0.0  # how far the original outputs moved on the verifying run (export.verify_runs); 0 unrun
    classifier: bool = True  # whether the explained scores are class scores (else the seed must be fed)


def augment(model: str | os.PathLike | onnx.ModelProto, layers=("auto",), composite="rcam",
            initial: str = "contrastive", relu: bool = False, top_k: int = 1, input_shape=None,
            methods=("rcam",), input_bounds=IMAGENET_BOUNDS, precision: str = "fp32",
            verify: bool = True, scores: str | None = None, fuse: bool = False) -> onnx.ModelProto:
    """Return `model` with Relevance-CAM outputs for `layers` added (docs/design.md section 2); `model` is not changed.

    layers: selectors, each `auto`, a tensor name, a node name, a torch module path prefix, or a negative index
    into the candidates that `onnx-rcam layers` lists. composite: `rcam` (the paper's rules), `epsilon_plus`, a
    JSON file or a dict mapping op types to rules. initial: `contrastive`, `onehot` or `logit`. relu: clip the raw
    map at 0 before normalising (Grad-CAM style). top_k: explain the top_k highest-scoring classes of each sample
    in the same run; rcam/class becomes [N, top_k] and the maps [N, top_k, H, W]. input_shape: the image input's
    shape, for models whose height and width are dynamic, e.g. ("N", 3, 224, 224); a name keeps a dimension
    dynamic. The augmented model then takes that shape only. methods: the CAMs to add, each with outputs
    METHOD/L/...: `rcam` (Relevance-CAM, under `composite` and `initial`), and the Grad-CAM family `gradcam`,
    `gradcampp`, `xgradcam`, `layercam`, `hirescam`, from the gradient of the class score, whose outputs hold the
    gradient in place of the relevance (METHOD/L/gradient); `lrp`, the LRP heatmap sum_k R_k (at layer `input`,
    the image itself: the input-level heatmap); `lrp-pos`, `rcam-pos` and `rcam-elem`, maps of the positive
    relevance (heads.py). input_bounds: (low, high), the least and greatest value of the
    image input, one per channel or one for all, for the zbox rule (epsilon_gamma_box); default: ImageNet's
    normalisation of pixel values in [0, 1] (images.Preprocessing.bounds gives them for other preprocessing).
    precision: the float type of the generated backward pass, `fp32` (default, whatever the model's own type) or
    `fp16` (faster on GPUs, less exact; README, Deployed models). The outputs added are float32 either way.
    verify: run the augmented model once in onnxruntime (CPU) on a synthetic batch before returning it; a model
    that does not run raises InternalError. False skips this, for models too big to run here.
    scores: the name of the output to explain (default: the first, which must be class scores [N, K]). Any other
    output, [N, ...] (a detector's [N, A, 5 + C] or [N, 4 + C, A], a segmenter's [N, C, H, W]), is explained by the
    input rcam/seed, which must then be fed: shaped like it ([N, top_k, ...] with top_k, top_k seeds per image),
    it is the initial relevance of every relevance method and the weights of the explained sum of scores for the
    gradient methods; rcam/target, rcam/class and `initial` are for class scores only.
    fuse: also output METHOD/fused/map for every method, the min-max normalisation of the mean of its maps over the
    layers (two or more; the layer key `fused` is then reserved).
    """
    result = build(model, layers, composite, initial, relu, top_k, input_shape, methods, input_bounds, precision,
                   verify, scores, fuse)
    if result.drift:
        warnings.warn(drift_note(result.drift), RuntimeWarning, stacklevel=2)
    return result.model


def build(model, layers=("auto",), composite="rcam", initial: str = "contrastive", relu: bool = False,
          top_k: int = 1, input_shape=None, methods=("rcam",), input_bounds=IMAGENET_BOUNDS,
          precision: str = "fp32", verify: bool = True, scores: str | None = None, fuse: bool = False) -> Augmented:
    chosen_methods = resolve_methods(methods)
    if initial not in INITIAL_KINDS:
        raise RcamError(f"unknown initial relevance {initial!r}; choose one of {', '.join(INITIAL_KINDS)}")
    if isinstance(layers, str):
        layers = (layers,)
    if not layers:
        raise RcamError("no layers given")
    chosen_rules = rules.composite(composite, input_bounds)
    original, canonical = _analyse(model, input_shape, scores)
    targets = resolve(canonical, layers)
    if fuse and (len(targets) < 2 or any(t.key == FUSED_KEY for t in targets)):
        raise RcamError(f"fusing maps needs two or more layers, none of them keyed {FUSED_KEY!r} (the fused maps' "
                        f"key)")
    tensors = canonical.graph.tensors()
    logits = canonical.logits
    if canonical.classifier and not 1 <= top_k <= logits.shape[1]:
        raise RcamError(f"top_k must be between 1 and the number of classes ({logits.shape[1]}), got {top_k}")
    if top_k < 1:
        raise RcamError(f"top_k (seeds per image) must be at least 1, got {top_k}")

    # Generated names must collide with nothing the original or the analysis graph holds.
    taken = set(tensors) | forward_tensors(original)
    taken |= {i.name for i in original.graph.initializer}
    b = Builder(default_opset(original), taken, nonnegative_tensors(canonical.graph), precision)
    batch = canonical.image.shape[0]
    scores = list(logits.shape[1:])
    if canonical.classifier:
        hot = explained_onehot(b, logits.name, logits.shape[1], batch, top_k)
        starts = {"relevance": lambda: seeded(b, initial_relevance(b, hot, logits.name, logits.shape[1], initial),
                                              scores, batch, top_k),
                  "gradient": lambda: seeded(b, hot, scores, batch, top_k)}
    else:  # a detector's or segmenter's scores: the seed says what is explained, for every method alike
        seed = seeded(b, None, scores, batch, top_k)
        starts = {"relevance": lambda: seed, "gradient": lambda: seed}
    target_tensors = list(dict.fromkeys(t.tensor for t in targets))
    swept = region(canonical, targets)
    signals = {}
    if any(m.signal == "relevance" for m in chosen_methods):
        signals["relevance"] = sweep(canonical, swept, target_tensors, starts["relevance"](), b, chosen_rules,
                                     image_readers(canonical))
    if any(m.signal == "gradient" for m in chosen_methods):
        # The chain rule from the scores: d (seed . scores) / d A at every target (a second sweep, its own nodes).
        signals["gradient"] = sweep(canonical, swept, target_tensors, starts["gradient"](), b,
                                    rules.composite("gradient"))
    for signal, reached in signals.items():
        unreached = [t.key for t in targets if reached[t.tensor] is None]
        if unreached:
            raise LayerSelectionError(
                f"no {signal} reaches {', '.join(map(repr, unreached))}: under these rules every path from it to "
                f"the class scores goes through a gate or a divisor (as the sigmoid in x * sigmoid(x)), which LRP "
                f"holds constant. Choose the tensor the gate scales, or another layer.")
    maps = {method.name: [] for method in chosen_methods}
    for target in targets:
        activation, shape = target.tensor, list(tensors[target.tensor].shape)
        shown = activation
        grid = target.tokens
        if grid is not None:  # tokens or channels-last: the image of the grid, after which every head is the same
            activation = grid_view(b, activation, grid)
            with b.per_sample():  # the activation output: one row per sample whatever top_k (batching.py)
                shown = grid_view(b, target.tensor, grid)
            shape = [shape[0], shape[-1], grid.height, grid.width]
        for method in chosen_methods:
            signal = signals[method.signal][target.tensor]
            if grid is not None:
                signal = grid_view(b, signal, grid)
            maps[method.name].append(cam(b, method, activation, signal, shape, canonical.image_size, target.key, relu,
                                         top_k, shown))
    if fuse:
        for method in chosen_methods:
            fused_map(b, method, maps[method.name], batch, canonical.image_size, top_k)
    materialize(original, canonical, b)
    protect_fusions(original, canonical, b)
    repeat_forward_reads(original, canonical, b, top_k)
    cast_forward_reads(original, canonical, b)
    model = assemble(original, b)
    record_layers(model, {t.key: t.tensor for t in targets},
                  {t.key: canonical.scopes.get(t.tensor, "") for t in targets})
    drift = verify_runs(model, b.outputs, original) if verify else 0.0
    return Augmented(model, targets, b.outputs, logits.name, drift, canonical.classifier)


def candidate_layers(model, input_shape=None, scores: str | None = None) -> list[Candidate]:
    """The layers of `model` that can be explained, shallowest first (what `onnx-rcam layers` lists)."""
    return candidates(_analyse(model, input_shape, scores)[1])


def _analyse(model, input_shape, scores: str | None = None):
    """The loaded model (its input shape fixed where asked) and its canonical analysis graph."""
    original = load(model)
    if input_shape is not None:
        fix_input_shape(original, list(input_shape))
    return original, canonicalize(infer_shapes(original), scores)
