"""z+ (LRP-alpha1-beta0 over both input signs), biases ignored (Montavon et al. 2019, section 10.2.3)."""

from .base import Rule, add_each, negative, positive, signed_parts, weigh_transposed


class ZPlus(Rule):
    name = "zplus"

    def linear(self, b, layer, relevance):
        pos, neg = layer.with_weight(positive(layer.weight.array)), layer.with_weight(negative(layer.weight.array))
        x_pos, x_neg = signed_parts(b, layer.inputs)
        # W+ x+ and W- x- are both non-negative, so z == 0 only where every contribution is 0.
        z = b.add(pos.forward(b, x_pos), neg.forward(b, x_neg))
        if z is None:
            return [None] * len(layer.inputs)
        share = b.div_or_zero(relevance, z, terms_share_sign=True)
        return add_each(b, weigh_transposed(b, x_pos, pos, share), weigh_transposed(b, x_neg, neg, share))
