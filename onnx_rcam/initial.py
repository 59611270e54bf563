"""The explained class per sample, the initial relevance at the logits (docs/design.md section 1), and the seed."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .builder import Builder

INITIAL_KINDS = ("contrastive", "onehot", "logit")
TARGET_INPUT = "rcam/target"
CLASS_OUTPUT = "rcam/class"
SEED_INPUT = "rcam/seed"


def explained_onehot(b: Builder, logits: str, classes: int, batch, top_k: int = 1) -> str:
    """Emit rcam/target and rcam/class (the explained classes); return their one-hot rows at the logits, one row per
    explained (sample, class) pair: [N, classes] for top_k = 1, [N * top_k, classes] (sample-major) otherwise."""
    with b.per_sample():
        # rcam/target: a negative entry, or the stored default of -1, means "the prediction" (the k-th best class).
        if top_k == 1:
            requested = b.add_input(TARGET_INPUT, np.array([-1], dtype=np.int64), ["rcam_targets"])
            ranked = b.argmax(logits, axis=1)
        else:
            requested = b.add_input(TARGET_INPUT, np.full([1, top_k], -1, dtype=np.int64), ["rcam_targets", top_k])
            ranked = b.node("TopK", [logits, b.ints([top_k])], outputs=2, axis=1)[1]
        chosen = b.where(b.less(requested, b.const(0, dtype=np.int64)), ranked, requested)
        explained = b.node("Expand", [chosen, b.shape(ranked)], out=b.claim(CLASS_OUTPUT))
        b.add_output(CLASS_OUTPUT, TensorProto.INT64, [batch] if top_k == 1 else [batch, top_k])
        pairs = explained if top_k == 1 else b.reshape(explained, b.ints([-1]))
    return b.cast(b.equal(b.unsqueeze(pairs, [1]), b.ints([list(range(classes))])), b.float_type)


def initial_relevance(b: Builder, hot: str, logits: str, classes: int, kind: str) -> str:
    """The relevance at the logits for the explained classes' one-hot rows `hot`."""
    if kind == "onehot":
        return hot
    if kind == "logit":
        return b.mul(hot, logits)
    # contrastive: 1 for the target, -1/K for every other class.
    return b.sub(b.scale(hot, 1.0 + 1.0 / classes), b.const(1.0 / classes))


def seeded(b: Builder, default: str | None, scores: list[int], batch, top_k: int = 1) -> str:
    """The input rcam/seed: the initial relevance itself, and the weights of the explained sum of scores for the
    gradient methods (docs/design.md section 6), as rows [N * top_k, *scores]. It is shaped like the explained scores
    [N, *scores] ([N, top_k, *scores] with top_k). With class scores it may be omitted: its stored default is NaN,
    and a NaN entry keeps `default`'s (the rows of one explained class each), so one file serves both uses. Other
    scores (a detector's, a segmenter's) have no default: the seed must be fed."""
    if SEED_INPUT not in b.inputs_by_name:
        shape = [batch, *scores] if top_k == 1 else [batch, top_k, *scores]
        if default is None:
            b.add_input(SEED_INPUT, None, shape)
        else:  # the stored default broadcasts over the explained rows (one NaN row), so its dimensions are not fixed
            b.add_input(SEED_INPUT, np.full([1] * (len(shape) - len(scores)) + scores, np.nan, dtype=np.float32),
                        ["rcam_seeds", *(["rcam_seed_k"] if top_k > 1 else []), *scores])
    rows = b.reshape(SEED_INPUT, b.ints([-1, *scores]))
    if b.float_type != TensorProto.FLOAT:  # the input is float32 whatever the backward's precision
        rows = b.cast(rows, b.float_type)
    return rows if default is None else b.where(b.node("IsNaN", [rows]), default, rows)
