"""One propagator per op family, registered by op type in one table.

A propagator receives the node, the relevance of each of its outputs (None where no relevance arrives) and returns
the relevance of each of its inputs (None where none goes). It knows its op and nothing of rules: it builds the op's
view (`LinearLayer` or `NonlinearOp`) and lets the composite's rule for the node do the rest. Structural ops
(reshapes, concatenation, padding) route relevance back where it came from under every rule.

Adding an op is one function and one `@register("OpType")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx_graphsurgeon as gs

from ..builder import Builder
from ..errors import UnsupportedOpError

Propagator = Callable[["Context", gs.Node, list], list]
PROPAGATORS: dict[str, Propagator] = {}


@dataclass
class Context:
    builder: Builder
    composite: object  # onnx_rcam.rules.Composite

    def rule(self, node: gs.Node):
        return self.composite.rule_for(node.op)


def register(*op_types: str):
    def decorate(function: Propagator) -> Propagator:
        for op_type in op_types:
            PROPAGATORS[op_type] = function
        return function
    return decorate


def supported_ops() -> list[str]:
    return sorted(PROPAGATORS)


def unsupported(node: gs.Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{node.op} node {node.name!r}: {why}")


from . import elementwise, linear, pooling, shape  # noqa: E402,F401  (registration side effect)
