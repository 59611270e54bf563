"""Forward tensors that the generated nodes read but the original model does not hold: copies of canonical nodes.

canonicalize may add nodes to the analysis graph (the Flatten of class scores that stay 4-D), and fusion.py
replaces reads of fusion-internal tensors by private copies of their producers. Both are forward computations:
the copies work on the model's own batch, and top-k (batching.py) repeats their outputs like any forward tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from .builder import Builder
from .canonicalize import Canonical
from .load import contradicts


def forward_tensors(original: onnx.ModelProto) -> set[str]:
    """Names of the tensors the model itself holds at run time: its inputs and every node's outputs."""
    return {i.name for i in original.graph.input} | {o for n in original.graph.node for o in n.output}


def copy_producer(canonical: Canonical, name: str, b: Builder, out: str | None = None) -> str:
    """Append a copy of the canonical node computing `name` (pads and BN already folded); returns its output."""
    source: gs.Node = canonical.graph.tensors()[name].inputs[0]
    inputs = []
    for tensor in source.inputs:
        if isinstance(tensor, gs.Constant):
            inputs.append(b.const(np.asarray(tensor.values), "copy_param", dtype=tensor.values.dtype))
        else:
            inputs.append(tensor.name)
    copy = out or b.fresh("copy")
    with b.per_sample():
        b.nodes.append(helper.make_node(source.op, inputs, [copy], name=b.fresh("node/copy"), **source.attrs))
    b.forward_copies[copy] = name
    return copy


def materialize(original: onnx.ModelProto, canonical: Canonical, b: Builder) -> None:
    """Compute, ahead of the generated nodes, every tensor they read that only the analysis graph has."""
    held = forward_tensors(original) | {i.name for i in original.graph.initializer}
    generated = {o for n in b.nodes for o in n.output} | {i.name for i in b.initializers} | b.inputs_by_name

    def ensure(node, name: str) -> str:
        if name and name not in held and name not in generated:
            generated.add(name)
            for tensor in canonical.graph.tensors()[name].inputs[0].inputs:
                if isinstance(tensor, gs.Variable):
                    ensure(None, tensor.name)
            copy_producer(canonical, name, b, out=name)
        return name

    b.rewrite_reads(ensure)


def slice_misinferred_reads(canonical: Canonical, b: Builder, inferred: dict[str, list]) -> None:
    """Forward tensors whose true shape ONNX's inference gets wrong (`inferred`, load.onnx_inferred_dims: after a
    ceil_mode pool) are read through a Slice to their true shape: a no-op at run time, after which the checker and
    onnxruntime's graph resolution see the very shapes the generated nodes' constants were computed from."""
    tensors = canonical.graph.tensors()
    sliced: dict[str, str] = {}

    def true_shape(node, name: str) -> str:
        tensor = tensors.get(name)
        if tensor is None or not contradicts(inferred.get(name), tensor.shape):
            return name
        if name not in sliced:
            axes = [i for i, (a, d) in enumerate(zip(inferred[name], tensor.shape)) if isinstance(d, int) and a != d]
            with b.per_sample():
                sliced[name] = b.slice(name, [0] * len(axes), [tensor.shape[i] for i in axes], axes)
            b.forward_copies[sliced[name]] = name
        return sliced[name]

    b.rewrite_reads(true_shape)
