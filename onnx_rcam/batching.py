"""Explain K classes per sample in one run: the backward pass runs on a batch of N*K (sample, class) pairs.

The sweep and the heads are written for one explained class per sample. For K > 1 every forward tensor that a
generated node reads is repeated K times along the batch axis (sample n's copies at rows n*K .. n*K+K-1), so the
generated graph computes exactly what it would for a batch of N*K images with one target each. Nodes marked
per-sample (choosing the classes, passing activations out) keep reading the originals.
"""

from __future__ import annotations

import onnx

from .builder import Builder
from .canonicalize import Canonical
from .forward_copies import forward_tensors


def repeat_forward_reads(original: onnx.ModelProto, canonical: Canonical, b: Builder, times: int) -> None:
    if times == 1:
        return
    forward = forward_tensors(original) | set(b.forward_copies)
    shapes = {name: tensor.shape for name, tensor in canonical.graph.tensors().items()}
    shapes.update({copy: shapes[source] for copy, source in b.forward_copies.items()})
    repeated: dict[str, str] = {}

    def repeat(name: str) -> str:
        if name not in repeated:
            shape = shapes[name]
            rank = len(shape)
            # The batch axis: the dynamic one, which a transformer's attention moves (qkv laid out [3, N, ...]).
            axis = next((i for i, d in enumerate(shape) if not isinstance(d, int)), 0)
            counts = [1] * (rank + 1)
            counts[axis + 1] = times
            spread = b.expand(b.unsqueeze(name, [axis + 1]), b.ints(counts))  # [..., N, K, ...]
            parts = [b.ints([-1]), b.node("Shape", [name], start=axis + 1)]
            if axis:
                parts.insert(0, b.node("Shape", [name], end=axis))
            repeated[name] = b.reshape(spread, b.concat(parts, axis=0))
        return repeated[name]

    b.rewrite_reads(lambda node, name: repeat(name) if name in forward and node.name not in b.per_sample_nodes
                    else name)
