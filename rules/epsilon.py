"""LRP-epsilon: z = W x + b, stabilised by eps * sign(z) (Montavon et al. 2019, section 10.2.2)."""

from .base import Rule, weigh


class Epsilon(Rule):
    name = "epsilon"

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def linear(self, b, layer, relevance):
        # The model already computed z = W x + b: reuse it instead of recomputing.
        share = b.div(relevance, b.stabilize(layer.output, self.eps))
        return weigh(b, layer.inputs, layer.transpose(b, share))


class Norm(Rule):
    """Proportional redistribution, R_i = x_i * J^T (R / f(x)): pooling and residual joins."""

    name = "norm"

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def linear(self, b, layer, relevance):
        z = layer.forward(b, layer.inputs) if layer.has_bias else layer.output
        share = b.div(relevance, b.stabilize(z, self.eps))
        return weigh(b, layer.inputs, layer.transpose(b, share))
