"""z+ (LRP-alpha1-beta0 over both input signs), biases ignored (Montavon et al. 2019, section 10.2.3), and z+ with
the bias kept as an input neuron whose relevance is spread over its window."""

import numpy as np

from .base import Rule, add_each, constant_like, negative, one_sign_sum, positive, signed_parts, weigh_transposed


class ZPlus(Rule):
    name = "zplus"

    def linear(self, b, layer, relevance):
        return self._redistribute(b, layer, relevance, bias=0.0)[0]

    @staticmethod
    def _redistribute(b, layer, relevance, bias):
        """(each input's relevance, R / z) for z = W+ x+ + W- x- + bias, bias >= 0 in the layer's bias layout; the
        inputs' relevance holds only the x-terms' share."""
        pos, neg = layer.with_weight(positive(layer.weight.array)), layer.with_weight(negative(layer.weight.array))
        x_pos, x_neg = signed_parts(b, layer.inputs)
        # W+ x+, W- x- and the bias are all non-negative, so z == 0 only where every contribution is 0.
        z = one_sign_sum(b, [(pos, x_pos), (neg, x_neg)], +1, offset=bias)
        if z is None:
            return [None] * len(layer.inputs), None
        share = b.div(relevance, z)
        return add_each(b, weigh_transposed(b, x_pos, pos, share), weigh_transposed(b, x_neg, neg, share)), share


class ZPlusBias(ZPlus):
    """z+ with the positive bias as one more input neuron: z = W+ x+ + W- x- + b+, and the bias neuron's share
    b+ R / z spread evenly over the inputs of the output's window (flat: the in-bounds inputs, zero padding not
    counted), as Bach et al. 2015 split a bias b_j into b_j / I over a neuron's I inputs. A neuron that only its
    bias drives (W+ x+ + W- x- = 0 < b) passes its relevance on instead of dropping it, so the layer conserves
    relevance wherever z > 0; a negative bias takes none, as under z+ (section 10.2.3 of Montavon et al. 2019)."""

    name = "zplus_bias"

    def linear(self, b, layer, relevance):
        bias = np.maximum(layer.bias, 0).astype(np.float32) if layer.has_bias else 0.0
        weighed, share = self._redistribute(b, layer, relevance, bias)
        if share is None or not np.any(bias):
            return weighed
        flat = layer.with_weight(np.ones_like(layer.weight.array))
        # b+ / |window| per output unit, from one sample's shape: the bias's forward over zeros, and the window's
        # size, the flat forward over ones (non-negative terms: tiny guards a window of no inputs).
        per_input = b.div(flat.forward(b, [constant_like(b, x, 0.0) for x in layer.inputs], offset=bias),
                          flat.forward(b, [constant_like(b, x, 1.0) for x in layer.inputs], offset=b.tiny))
        return add_each(b, weighed, flat.transpose(b, b.mul(share, per_input)))
