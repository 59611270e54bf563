"""z+ (LRP-alpha1-beta0 over both input signs), biases ignored (Montavon et al. 2019, section 10.2.3)."""

from .base import Rule, add_each, negative, one_sign_sum, positive, signed_parts, weigh_transposed


class ZPlus(Rule):
    name = "zplus"

    def linear(self, b, layer, relevance):
        pos, neg = layer.with_weight(positive(layer.weight.array)), layer.with_weight(negative(layer.weight.array))
        x_pos, x_neg = signed_parts(b, layer.inputs)
        # W+ x+ and W- x- are both non-negative, so z == 0 only where every contribution is 0.
        z = one_sign_sum(b, [(pos, x_pos), (neg, x_neg)], +1)
        if z is None:
            return [None] * len(layer.inputs)
        share = b.div(relevance, z)
        return add_each(b, weigh_transposed(b, x_pos, pos, share), weigh_transposed(b, x_neg, neg, share))
