"""Stage 4: walk the region in reverse topological order; each node's propagator emits its backward ops.

The sweep knows no op and no rule: it only routes relevance between propagators and sums it where a tensor is read
by several nodes.
"""

from __future__ import annotations

from .builder import Builder
from .canonicalize import Canonical
from .errors import UnsupportedOpError
from .propagators import PROPAGATORS, Context, supported_ops


def sweep(canonical: Canonical, region: set[str], targets: list[str], initial: str, builder: Builder,
          composite) -> dict[str, str]:
    """Relevance of each target tensor, given the initial relevance at the logits."""
    incoming: dict[str, list[str]] = {canonical.logits.name: [initial]}

    def total(tensor: str) -> str | None:
        parts = incoming.get(tensor)
        if not parts:
            return None
        if len(parts) > 1:
            incoming[tensor] = [builder.sum(parts)]
        return incoming[tensor][0]

    context = Context(builder, composite)
    path = [n for n in canonical.graph.nodes
            if any(t.name in region for t in n.outputs) and any(t.name in region for t in n.inputs)]
    for node in reversed(path):
        relevance_out = [total(t.name) for t in node.outputs]
        if all(r is None for r in relevance_out):
            continue  # no relevance reaches it (a gate's branch, a divisor, a shape computation): nothing to give
        propagate = PROPAGATORS.get(node.op)
        if propagate is None:
            raise _unsupported(node, canonical, targets)
        relevance_in = propagate(context, node, relevance_out)
        for tensor, relevance in zip(node.inputs, relevance_in):
            if relevance is not None and tensor.name in region:
                incoming.setdefault(tensor.name, []).append(relevance)
    return {t: total(t) for t in targets}


def _unsupported(node, canonical: Canonical, targets: list[str]) -> UnsupportedOpError:
    inputs = ", ".join(t.name for t in node.inputs if t.name) or "none"
    return UnsupportedOpError(
        f"unsupported op {node.op} (node {node.name!r}, reading {inputs}) on the relevance path from "
        f"{', '.join(targets)} to the class scores {canonical.logits.name!r}.\n"
        f"Supported ops: {', '.join(supported_ops())}.\n"
        f"Choose a layer after it, or add a propagator for {node.op} (see the README, 'Adding an op').")
