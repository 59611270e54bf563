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
    samples: list[str] = []  # N, emitted with the first repeat (ahead of the rewritten nodes, and not rewritten)

    def repeat(name: str) -> str:
        if name not in repeated:
            # The batch axis: the dynamic one, which a transformer's attention moves (qkv laid out [3, N, ...]). It
            # may hold N * W rows (a Swin's W attention windows per image): each sample's K copies must hold all
            # its W rows, in order, as the backward of N * K images lays them out, so N is split off first.
            if not samples:
                samples.append(b.node("Shape", [canonical.image.name], end=1))
            shape = shapes[name]
            axis = next((i for i, d in enumerate(shape) if not isinstance(d, int)), 0)
            leading = [b.node("Shape", [name], end=axis)] if axis else []
            grouped = b.reshape(name, b.concat(leading + [samples[0], b.ints([-1])], axis=0))  # [..., N, rest]
            counts = [1] * (axis + 3)
            counts[axis + 1] = times
            spread = b.expand(b.unsqueeze(grouped, [axis + 1]), b.ints(counts))             # [..., N, K, rest]
            parts = leading + [b.ints([-1]), b.node("Shape", [name], start=axis + 1)]
            repeated[name] = b.reshape(spread, b.concat(parts, axis=0))
        return repeated[name]

    b.rewrite_reads(lambda node, name: repeat(name) if name in forward and node.name not in b.per_sample_nodes
                    else name)
