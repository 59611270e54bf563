"""Rules that look only at the layer's connectivity, not at its input (Montavon et al. 2019, section 10.2.4):
relevance goes to the inputs in proportion to a fixed weight per connection, the same for every image.

- flat: every connection of a window weighs 1: R_i = sum_j R_j / |window_j|.
- wsquare: a connection weighs w_ij^2: R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j.
"""

import numpy as np

from .base import Rule, constant_like


class _Connectivity(Rule):
    def connection_weights(self, weight):
        raise NotImplementedError

    def linear(self, b, layer, relevance):
        weighted = layer.with_weight(self.connection_weights(layer.weight.array))
        ones = [constant_like(b, x, 1.0) for x in layer.inputs]
        # Non-negative weights over ones: z is 0 only for a window of zero weights, whose share weighs nothing.
        z = weighted.forward(b, ones, offset=b.tiny)
        if z is None:
            return [None] * len(layer.inputs)
        return weighted.transpose(b, b.div(relevance, z))


class Flat(_Connectivity):
    name = "flat"

    def connection_weights(self, weight):
        return np.ones_like(weight)


class WSquare(_Connectivity):
    name = "wsquare"

    def connection_weights(self, weight):
        return weight * weight
