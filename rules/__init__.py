"""LRP rules, each written once over the linear-layer view, and composites: which rule each op gets.

A composite is data: op type -> rule spec, with "*" for every op not named. A rule spec is a rule name, or a dict
with "rule" and the rule's parameters, e.g. {"rule": "epsilon", "eps": 0.25}.
"""

from __future__ import annotations

import json
from pathlib import Path

from onnx_rcam.errors import CompositeError

from .alphabeta import AlphaBeta
from .base import Rule
from .basic import Gradient, Pass
from .epsilon import Epsilon, Norm
from .zplus import ZPlus

RULES: dict[str, type[Rule]] = {r.name: r for r in (ZPlus, Epsilon, AlphaBeta, Norm, Pass, Gradient)}

# Pools divide exactly (guarded); residual joins of signed values are stabilised (DESIGN.md section 1).
_POOLS_AND_JOINS = {**{op: {"rule": "norm", "eps": 0.0} for op in ("AveragePool", "GlobalAveragePool", "ReduceMean",
                                                                   "ReduceSum")},
                    "Add": "norm", "Sum": "norm"}

COMPOSITES: dict[str, dict] = {
    # The paper's rules (DESIGN.md section 1).
    "rcam": {"Conv": "zplus", "Gemm": "zplus", "MatMul": "zplus", **_POOLS_AND_JOINS, "MaxPool": "gradient",
             "*": "pass"},
    # zennit's EpsilonPlus: z+ for convolutions, epsilon for dense layers.
    "epsilon_plus": {"Conv": "zplus", "Gemm": "epsilon", "MatMul": "epsilon", **_POOLS_AND_JOINS,
                     "MaxPool": "gradient", "*": "pass"},
}


def make_rule(spec) -> Rule:
    if isinstance(spec, str):
        spec = {"rule": spec}
    params = dict(spec)
    name = params.pop("rule", None)
    if name not in RULES:
        raise CompositeError(f"unknown rule {name!r}; known rules: {', '.join(sorted(RULES))}")
    try:
        return RULES[name](**params)
    except TypeError as exc:
        raise CompositeError(f"rule {name!r}: {exc}") from None


class Composite:
    def __init__(self, name: str, table: dict):
        self.name = name
        self._rules = {op: make_rule(spec) for op, spec in table.items()}
        if "*" not in self._rules:
            self._rules["*"] = Pass()

    def rule_for(self, op_type: str) -> Rule:
        return self._rules.get(op_type, self._rules["*"])


def composite(name) -> Composite:
    """A preset by name, a table like the presets ({"Conv": "zplus", "*": "pass", ...}), a JSON file holding one,
    or a Composite."""
    if isinstance(name, Composite):
        return name
    if isinstance(name, dict):
        return Composite("custom", name)
    if name in COMPOSITES:
        return Composite(name, COMPOSITES[name])
    path = Path(name)
    if path.suffix.lower() == ".json" or path.is_file():
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CompositeError(f"cannot read composite file {path}: {exc}") from None
        if not isinstance(table, dict) or not all(isinstance(op, str) for op in table):
            raise CompositeError(f"composite file {path}: expected a JSON object mapping op types to rules")
        return Composite(path.stem, table)
    raise CompositeError(f"unknown composite {name!r}; known composites: {', '.join(sorted(COMPOSITES))}, or a "
                         f"JSON file")


__all__ = ["RULES", "COMPOSITES", "Composite", "Rule", "composite", "make_rule", "ZPlus", "Epsilon", "AlphaBeta",
           "Norm", "Pass", "Gradient"]
