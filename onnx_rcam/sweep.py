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
          composite, image_readers: frozenset = frozenset()) -> dict[str, str]:
    """Relevance of each target tensor, given the initial relevance at the logits. image_readers: the nodes that
    get the composite's rule for the image layer."""
    incoming: dict[str, list[str]] = {canonical.logits.name: [initial]}

    def total(tensor: str) -> str | None:
        parts = incoming.get(tensor)
        if not parts:
            return None
        if len(parts) > 1:
            incoming[tensor] = [builder.sum(parts)]
        return incoming[tensor][0]

    context = Context(builder, composite, image_readers)
    path = [n for n in canonical.graph.nodes
            if any(t.name in region for t in n.outputs) and any(t.name in region for t in n.inputs)]
    for node in reversed(path):
        relevance_out = [total(t.name) for t in node.outputs]
        if all(r is None for r in relevance_out):
            continue  # no relevance reaches it (a gate's branch, a divisor, a shape computation): nothing to give
        propagate = PROPAGATORS.get(node.op)
        if propagate is None:
            raise _unsupported(node, canonical, targets, region)
        relevance_in = propagate(context, node, relevance_out)
        for tensor, relevance in zip(node.inputs, relevance_in):
            if relevance is not None and tensor.name in region:
                incoming.setdefault(tensor.name, []).append(relevance)
    return {t: total(t) for t in targets}


def _unsupported(node, canonical: Canonical, targets: list[str], region: set[str]) -> UnsupportedOpError:
    inputs = ", ".join(t.name for t in node.inputs if t.name) or "none"
    return UnsupportedOpError(
        f"unsupported op {node.op} (node {node.name!r}, reading {inputs}) on the relevance path from "
        f"{', '.join(targets)} to the class scores {canonical.logits.name!r}:\n"
        f"  {_where(node, canonical, targets, region)}\n"
        f"Supported ops: {', '.join(supported_ops())}.\n"
        f"Choose a layer after it (`onnx-rcam layers MODEL` lists them), or add a propagator for {node.op}: one "
        f"function and one @register(\"{node.op}\") (see the README, 'Adding an op').")


def _where(node, canonical: Canonical, targets: list[str], region: set[str]) -> str:
    """The node on one shortest path from a chosen layer to the class scores, e.g.
    `layer3 -> Conv 'c' -> [Softplus 's'] -> GlobalAveragePool 'g' -> Gemm 'fc' -> logits`."""
    def shortest(start, step, done) -> list:
        paths, seen = [[start]], {id(start)}
        while paths:
            path = paths.pop(0)
            if done(path[-1]):
                return path[1:]
            for following in step(path[-1]):
                if id(following) not in seen:
                    seen.add(id(following))
                    paths.append(path + [following])
        return []

    def producers(n):
        return [t.inputs[0] for t in n.inputs if t.name in region and t.name not in targets and t.inputs]

    def readers(n):
        return [r for t in n.outputs if t.name in region for r in t.outputs]

    def reads_target(n):
        return any(t.name in targets for t in n.inputs)

    def computes_logits(n):
        return any(t.name == canonical.logits.name for t in n.outputs)

    below = shortest(node, producers, reads_target)[::-1]
    above = [] if computes_logits(node) else shortest(node, readers, computes_logits)
    layer = next((t.name for t in (below[0] if below else node).inputs if t.name in targets), targets[0])
    steps = [f"{n.op} {n.name!r}" for n in below] + [f"[{node.op} {node.name!r}]"]
    steps += [f"{n.op} {n.name!r}" for n in above]
    if len(steps) > 9:
        marked = len(below)
        keep = {0, 1, marked - 1, marked, marked + 1, len(steps) - 2, len(steps) - 1}
        steps = [step if i in keep else "..." for i, step in enumerate(steps)]
        steps = [step for i, step in enumerate(steps) if step != "..." or i == 0 or steps[i - 1] != "..."]
    return " -> ".join([layer] + steps + [canonical.logits.name])
