"""The initial relevance at the logits, and the class it explains (DESIGN.md section 1)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builder import Builder

INITIAL_KINDS = ("contrastive", "onehot", "logit")
TARGET_INPUT = "rcam/target"
CLASS_OUTPUT = "rcam/class"


def initial_relevance(b: Builder, logits: str, classes: int, kind: str) -> str:
    """Emit rcam/class (the explained class per sample) and return the relevance at the logits."""
    predicted = b.argmax(logits, axis=1)
    requested = b.claim(TARGET_INPUT)
    # rcam/target defaults to [-1]: a negative entry, or the default, means "explain the predicted class".
    chosen = b.where(b.less(requested, b.const(0, dtype=np.int64)), predicted, requested)
    explained = b.node("Expand", [chosen, b.shape(predicted)], out=b.claim(CLASS_OUTPUT))
    hot = b.cast(b.equal(b.unsqueeze(explained, [1]), b.ints([list(range(classes))])), TensorProto.FLOAT)
    if kind == "onehot":
        return hot
    if kind == "logit":
        return b.mul(hot, logits)
    # contrastive: 1 for the target, -1/K for every other class.
    return b.sub(b.scale(hot, 1.0 + 1.0 / classes), b.const(1.0 / classes))
