"""One propagator per op family, registered by op type in one table.

A propagator receives the node, the relevance of each of its outputs (None where no relevance arrives) and returns
the relevance of each of its inputs (None where none goes). It knows its op and nothing of rules: it builds the op's
view (`LinearLayer` or `NonlinearOp`) and lets the composite's rule for the node do the rest. Structural ops
(reshapes, concatenation, padding) route relevance back where it came from under every rule.

Adding an op is one function and one `@register("OpType")`; the sweep calls it only when relevance reaches at
least one of the node's outputs. A registration may also say when the op's output is non-negative (`sign=`): rules
then skip the x- half of z+ for the layers that read it, which is exact and halves their cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..builder import Builder
from ..errors import UnsupportedOpError

Propagator = Callable[["Context", gs.Node, list], list]
SignRule = Callable[[gs.Node, Callable[[gs.Tensor], bool]], bool]
PROPAGATORS: dict[str, Propagator] = {}
SIGNS: dict[str, SignRule] = {}


@dataclass
class Context:
    builder: Builder
    composite: object  # onnx_rcam.rules.Composite
    image_readers: frozenset = frozenset()  # names of the nodes that first compute on the image (select.py)

    def rule(self, node: gs.Node):
        return self.composite.rule_for(node.op, node.name in self.image_readers, depthwise(node))


def depthwise(node: gs.Node) -> bool:
    """A Conv with one group per input channel (its weight [C_out, 1, kh, kw]): the composite key `depthwise`."""
    return node.op == "Conv" and node.attrs.get("group", 1) > 1 and node.inputs[1].shape[1] == 1


def register(*op_types: str, sign: SignRule | None = None):
    def decorate(function: Propagator) -> Propagator:
        for op_type in op_types:
            PROPAGATORS[op_type] = function
            if sign is not None:
                SIGNS[op_type] = sign
        return function
    return decorate


def always_nonnegative(node: gs.Node, is_nonnegative) -> bool:
    return True


def like_first_input(node: gs.Node, is_nonnegative) -> bool:
    return is_nonnegative(node.inputs[0])


def like_all_inputs(node: gs.Node, is_nonnegative) -> bool:
    return all(is_nonnegative(t) for t in node.inputs if t.name)


def nonnegative_tensors(graph: gs.Graph) -> set[str]:
    """Names of the activations that are >= 0 for every input, by the registered sign rules."""
    known: set[str] = set()

    def is_nonnegative(tensor: gs.Tensor) -> bool:
        if isinstance(tensor, gs.Constant):
            return bool(np.all(tensor.values >= 0))
        return tensor.name in known

    for node in graph.nodes:  # topologically sorted by canonicalize
        sign = SIGNS.get(node.op)
        if sign is not None and sign(node, is_nonnegative):
            known.update(t.name for t in node.outputs)
    return known


def supported_ops() -> list[str]:
    return sorted(PROPAGATORS)


def unsupported(node: gs.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{node.op} node {node.name!r}: {why}")


from . import (einsum, elementwise, linear, normalization, pooling, products,  # noqa: E402,F401
               quantization, resize, shape)  # registration side effect
