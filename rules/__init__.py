"""LRP rules, each written once over the linear-layer view, and composites: which rule each op gets.

A composite is data: op type -> rule spec, with "*" for every op not named, "input" for the linear layers that
read the image (the first Conv) and "depthwise" for depthwise Convs (Conv's rule where it names none). A rule spec
is a rule name, or a dict with "rule" and the rule's parameters, e.g. {"rule": "epsilon", "eps": 0.25}. A zbox spec without bounds takes the image's (`input_bounds`: what the
preprocessing maps pixel values 0 and 1 to, per channel).
"""

from __future__ import annotations

import json
from pathlib import Path

from onnx_rcam.errors import CompositeError

from .alphabeta import AlphaBeta
from .base import Rule
from .basic import Gradient, Pass
from .epsilon import Epsilon, Norm
from .flat import Flat, WSquare
from .gamma import Gamma
from .zbox import ZBox
from .zplus import ZPlus, ZPlusBias

RULES: dict[str, type[Rule]] = {r.name: r for r in (ZPlus, ZPlusBias, Epsilon, AlphaBeta, Norm, Pass, Gradient, Gamma,
                                                    ZBox, Flat, WSquare)}
INPUT = "input"  # the composite key for the layers that read the image
DEPTHWISE = "depthwise"  # the composite key for depthwise Convs (one group per input channel)
ATTENTION = "attention"  # the composite key for attention's A V, the weights A = softmax(...) held constant

# Pools and resizing divide exactly (guarded); residual joins of signed values are stabilised (docs/design.md
# section 1).
_POOLS_AND_JOINS = {**{op: {"rule": "norm", "eps": 0.0} for op in ("AveragePool", "GlobalAveragePool", "ReduceMean",
                                                                   "ReduceSum", "Resize")},
                    "Add": "norm", "Sum": "norm", "Sub": "norm",
                    # CP-LRP / AttnLRP: the softmax weights held constant, LRP-epsilon through the values.
                    ATTENTION: "norm"}

# Max pools route relevance to each window's maximum, as their gradient does.
_WINNER_TAKES_ALL = {"MaxPool": "gradient", "GlobalMaxPool": "gradient"}

COMPOSITES: dict[str, dict] = {
    # The paper's rules (docs/design.md section 1).
    "rcam": {"Conv": "zplus", "ConvTranspose": "zplus", "Gemm": "zplus", "MatMul": "zplus", "Einsum": "zplus",
             **_POOLS_AND_JOINS, **_WINNER_TAKES_ALL, "*": "pass"},
    # zennit's EpsilonPlus: z+ for convolutions, epsilon for dense layers.
    "epsilon_plus": {"Conv": "zplus", "ConvTranspose": "zplus", "Gemm": "epsilon", "MatMul": "epsilon",
                     "Einsum": "epsilon", **_POOLS_AND_JOINS, **_WINNER_TAKES_ALL, "*": "pass"},
    # The plain chain rule everywhere: the sweep computes gradients (the Grad-CAM family's signal).
    "gradient": {"*": "gradient"},
}
# zennit's composites for input-level heatmaps (Kohlbrenner et al. 2020, "Towards best practice in explaining
# neural network decisions with LRP"): a rule for the image layer, another for the convolutions, epsilon for dense.
COMPOSITES["epsilon_plus_flat"] = {**COMPOSITES["epsilon_plus"], INPUT: "flat"}
_GAMMA = {"rule": "gamma", "gamma": 0.25}
COMPOSITES["epsilon_gamma_box"] = {**COMPOSITES["epsilon_plus"], "Conv": _GAMMA, "ConvTranspose": _GAMMA,
                                   INPUT: "zbox"}
# The paper's rules, except that a depthwise conv's positive bias is an input neuron whose relevance goes on to the
# window (rules/zplus.py): z+ drops the relevance of units that only their bias drives, 78-84% of the bundled
# model's by `_blocks.10` (README, Limits).
COMPOSITES["rcam_bias"] = {**COMPOSITES["rcam"], DEPTHWISE: "zplus_bias"}
_ALPHA2_BETA1 = {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}
COMPOSITES["epsilon_alpha2_beta1"] = {**COMPOSITES["epsilon_plus"], "Conv": _ALPHA2_BETA1,
                                      "ConvTranspose": _ALPHA2_BETA1}


def make_rule(spec, input_bounds=None) -> Rule:
    if isinstance(spec, str):
        spec = {"rule": spec}
    params = dict(spec)
    name = params.pop("rule", None)
    if name == ZBox.name and input_bounds is not None:
        params.setdefault("low", input_bounds[0])
        params.setdefault("high", input_bounds[1])
    if name not in RULES:
        raise CompositeError(f"unknown rule {name!r}; known rules: {', '.join(sorted(RULES))}")
    try:
        return RULES[name](**params)
    except TypeError as exc:
        raise CompositeError(f"rule {name!r}: {exc}") from None


class Composite:
    def __init__(self, name: str, table: dict, input_bounds=None):
        self.name = name
        self._rules = {op: make_rule(spec, input_bounds) for op, spec in table.items()}
        if "*" not in self._rules:
            self._rules["*"] = Pass()

    def rule_for_attention(self) -> Rule:
        """The rule of a product with attention weights held constant (A V); MatMul's where a table names none."""
        return self._rules.get(ATTENTION) or self.rule_for("MatMul")

    def rule_for(self, op_type: str, reads_image: bool = False, depthwise: bool = False) -> Rule:
        if reads_image and INPUT in self._rules:
            return self._rules[INPUT]
        if depthwise and DEPTHWISE in self._rules:
            return self._rules[DEPTHWISE]
        return self._rules.get(op_type, self._rules["*"])


def composite(name, input_bounds=None) -> Composite:
    """A preset by name, a table like the presets ({"Conv": "zplus", "*": "pass", ...}), a JSON file holding one,
    or a Composite. input_bounds: (low, high) of the image's values, for zbox specs that give none."""
    if isinstance(name, Composite):
        return name
    if isinstance(name, dict):
        return Composite("custom", name, input_bounds)
    if name in COMPOSITES:
        return Composite(name, COMPOSITES[name], input_bounds)
    path = Path(name)
    if path.suffix.lower() == ".json" or path.is_file():
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CompositeError(f"cannot read composite file {path}: {exc}") from None
        if not isinstance(table, dict) or not all(isinstance(op, str) for op in table):
            raise CompositeError(f"composite file {path}: expected a JSON object mapping op types to rules")
        return Composite(path.stem, table, input_bounds)
    raise CompositeError(f"unknown composite {name!r}; known composites: {', '.join(sorted(COMPOSITES))}, or a "
                         f"JSON file")


__all__ = ["RULES", "COMPOSITES", "INPUT", "DEPTHWISE", "Composite", "Rule", "composite", "make_rule", "ZPlus",
           "ZPlusBias", "Epsilon", "AlphaBeta", "Norm", "Pass", "Gradient", "Gamma", "ZBox", "Flat", "WSquare"]
