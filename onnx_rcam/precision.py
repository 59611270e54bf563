"""The backward pass computes in one float type (fp32 unless --precision fp16), whatever the model's own.

The generated nodes read forward tensors of the model's type: fp16 everywhere in a model converted for the GPU,
fp16 inside one that keeps fp32 inputs and outputs. Each such tensor is cast once to the backward's type, for all
of its readers; the forward computations the generated graph repeats (forward_copies.py, fusion.py) keep the model's
type, as the nodes they copy do.
"""

from __future__ import annotations

import numpy as np
import onnx

from .builder import Builder
from .canonicalize import Canonical
from .forward_copies import forward_tensors

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def cast_forward_reads(original: onnx.ModelProto, canonical: Canonical, b: Builder) -> None:
    tensors = canonical.graph.tensors()
    forward = forward_tensors(original)

    def dtype_of(name: str):
        tensor = tensors.get(b.forward_copies.get(name, name))
        return None if tensor is None or tensor.dtype is None else np.dtype(tensor.dtype)

    copies = set(b.forward_copies)
    casts: dict[str, str] = {}

    def cast(node: onnx.NodeProto, name: str) -> str:
        if any(o in copies for o in node.output) or (name not in forward and name not in copies):
            return name  # a forward computation reads the model's own types; generated tensors are typed already
        dtype = dtype_of(name)
        if dtype is None or dtype == b.float_dtype or dtype.type not in FLOAT_TYPES:
            return name
        if name not in casts:
            casts[name] = b.cast(name, b.float_type)
        return casts[name]

    b.rewrite_reads(cast)
