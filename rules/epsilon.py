"""LRP-epsilon: z = W x + b, stabilised by eps * sign(z) (Montavon et al. 2019, section 10.2.2)."""

import numpy as np

from .base import Rule, weigh


class Epsilon(Rule):
    name = "epsilon"

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def linear(self, b, layer, relevance):
        # The model already computed z = W x + b: reuse it (or, on the relevance's support, its ReLU's output).
        share = b.div(relevance, b.stabilize(b.on_support(layer.output, relevance), self.eps))
        return weigh(b, layer.inputs, layer.transpose(b, share))


class Norm(Rule):
    """Proportional redistribution, R_i = x_i * J^T (R / f(x)), for pooling and residual joins.

    eps > 0 stabilises f(x) by eps * sign(f(x)); eps = 0 divides exactly and gives 0 where f(x) = 0, which conserves
    relevance exactly for pools, whose windows of non-negative weights have f(x) = 0 only where every term is 0.
    """

    name = "norm"

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def linear(self, b, layer, relevance):
        one_sign = all(x in b.nonnegative for x in layer.inputs) and not np.any(layer.weight.array < 0)
        if not self.eps and one_sign:
            z = (layer.forward(b, layer.inputs, offset=b.tiny) if layer.has_bias
                 else b.add(layer.output, b.const(b.tiny)))
            share = b.div(relevance, z)
        else:
            z = layer.forward(b, layer.inputs) if layer.has_bias else b.on_support(layer.output, relevance)
            share = b.div(relevance, b.stabilize(z, self.eps)) if self.eps else b.div_or_zero(relevance, z)
        return weigh(b, layer.inputs, layer.transpose(b, share))
