"""The pipeline: load -> canonicalize -> select -> sweep -> heads -> export."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from . import rules
from .builder import Builder
from .canonicalize import canonicalize
from .errors import RcamError
from .export import assemble
from .fusion import protect_fusions
from .heads import output_names, relevance_cam
from .initial import INITIAL_KINDS, initial_relevance
from .load import default_opset, infer_shapes, load
from .propagators import nonnegative_tensors
from .select import Target, region, resolve
from .sweep import sweep

METHOD = "rcam"


@dataclass
class Augmented:
    model: onnx.ModelProto
    targets: list[Target]
    outputs: list[tuple[str, int, list]]   # (name, elem_type, shape) of each added output
    logits: str


def augment(model: str | os.PathLike | onnx.ModelProto, layers=("auto",), composite: str = "rcam",
            initial: str = "contrastive", relu: bool = False) -> onnx.ModelProto:
    """Return `model` with Relevance-CAM outputs for `layers` added (DESIGN.md section 2); `model` is not changed.

    layers: selectors, each `auto`, a tensor name, a node name, a torch module path prefix, or a negative index
    into the candidates that `onnx-rcam layers` lists. composite: `rcam` (the paper's rules) or `epsilon_plus`.
    initial: `contrastive`, `onehot` or `logit`. relu: clip the raw map at 0 before normalising (Grad-CAM style).
    """
    return build(model, layers, composite, initial, relu).model


def build(model, layers=("auto",), composite: str = "rcam", initial: str = "contrastive",
          relu: bool = False) -> Augmented:
    if initial not in INITIAL_KINDS:
        raise RcamError(f"unknown initial relevance {initial!r}; choose one of {', '.join(INITIAL_KINDS)}")
    if isinstance(layers, str):
        layers = (layers,)
    if not layers:
        raise RcamError("no layers given")
    chosen_rules = rules.composite(composite)
    original = load(model)
    canonical = canonicalize(infer_shapes(original))
    targets = resolve(canonical, layers)
    tensors = canonical.graph.tensors()

    # Generated names must collide with nothing the original or the analysis graph holds.
    taken = set(tensors) | {t.name for t in original.graph.input} | {o for n in original.graph.node for o in n.output}
    taken |= {i.name for i in original.graph.initializer}
    b = Builder(default_opset(original), taken, nonnegative_tensors(canonical.graph))
    logits = canonical.logits
    start = initial_relevance(b, logits.name, logits.shape[1], initial)
    target_tensors = list(dict.fromkeys(t.tensor for t in targets))
    relevance = sweep(canonical, region(canonical, targets), target_tensors, start, b, chosen_rules)

    batch = canonical.image.shape[0]
    image_size = tuple(canonical.image.shape[2:])
    outputs = []
    for target in targets:
        shape = list(tensors[target.tensor].shape)
        names = output_names(METHOD, target.key)
        relevance_cam(b, target.tensor, relevance[target.tensor], tuple(shape[2:]), image_size, names, relu)
        outputs += [(names["map"], TensorProto.FLOAT, [batch, *image_size]),
                    (names["raw"], TensorProto.FLOAT, [batch, *shape[2:]]),
                    (names["relevance"], TensorProto.FLOAT, [batch, *shape[1:]]),
                    (names["activation"], TensorProto.FLOAT, [batch, *shape[1:]])]
    protect_fusions(original, canonical, b)
    return Augmented(assemble(original, b, outputs, batch), targets, outputs, logits.name)
