"""LRP-alpha-beta, alpha - beta = 1: positive and negative contributions weighed apart (Montavon et al. 2019)."""

from onnx_rcam.errors import CompositeError

from .base import Rule, add_each, negative, one_sign_sum, positive, signed_parts, weigh_transposed


class AlphaBeta(Rule):
    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0):
        if abs(alpha - beta - 1.0) > 1e-9 or beta < 0:
            raise CompositeError(f"alphabeta needs alpha - beta = 1 and beta >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta

    def linear(self, b, layer, relevance):
        pos, neg = layer.with_weight(positive(layer.weight.array)), layer.with_weight(negative(layer.weight.array))
        x_pos, x_neg = signed_parts(b, layer.inputs)
        activating = one_sign_sum(b, [(pos, x_pos), (neg, x_neg)], +1)
        inhibiting = one_sign_sum(b, [(pos, x_neg), (neg, x_pos)], -1)
        terms = []
        if activating is not None and self.alpha:
            share = b.scale(b.div(relevance, activating), self.alpha)
            terms += [weigh_transposed(b, x_pos, pos, share), weigh_transposed(b, x_neg, neg, share)]
        if inhibiting is not None and self.beta:
            share = b.scale(b.div(relevance, inhibiting), -self.beta)
            terms += [weigh_transposed(b, x_neg, pos, share), weigh_transposed(b, x_pos, neg, share)]
        return add_each(b, *terms) if terms else [None] * len(layer.inputs)
