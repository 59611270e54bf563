"""LRP-gamma: contributions of the neuron's own sign favoured by gamma (Montavon et al. 2019, section 10.2.3).

For non-negative inputs and a neuron with z = W x > 0 this is the overview's rule, z = (W + gamma W+) x. For signed
inputs (linear bottlenecks, normalised images) the same idea per sign, as zennit's Gamma does it: with
W_up = W + gamma W+ and W_down = W + gamma W-,
  z > 0: z_up   = W_up x+ + W_down x-   (every positive contribution grows by gamma; z_up >= z > 0),
  z < 0: z_down = W_down x+ + W_up x-   (every negative contribution grows; z_down <= z < 0),
and R_in = x+ (W_up^T c_up + W_down^T c_down) + x- (W_down^T c_up + W_up^T c_down), c = R / z on each side, 0 where
z = 0. z_up + z_down = (2 + gamma) W x gives the sign of z with no extra pass. Biases are ignored, as by z+ (the
limit gamma -> infinity) and the paper's rules.
"""

from .base import Rule, add_each, negative, positive, signed_parts, weigh_transposed


class Gamma(Rule):
    name = "gamma"

    def __init__(self, gamma: float = 0.25):
        self.gamma = gamma

    def linear(self, b, layer, relevance):
        weight = layer.weight.array
        up = layer.with_weight(weight + self.gamma * positive(weight))
        down = layer.with_weight(weight + self.gamma * negative(weight))
        x_pos, x_neg = signed_parts(b, layer.inputs)
        z_up = b.sum([up.forward(b, x_pos), down.forward(b, x_neg)])
        z_down = b.sum([down.forward(b, x_pos), up.forward(b, x_neg)])
        if z_up is None or z_down is None:
            return [None] * len(layer.inputs)
        direction = b.add(z_up, z_down)
        zero = b.const(0.0)
        # Each quotient is kept on its side only, where |z_side| >= |z| > 0; testing z_side too keeps fp32 rounding
        # from ever selecting a division by 0. Where discards the other quotients.
        up_side = b.and_(b.greater(direction, zero), b.greater(z_up, zero))
        down_side = b.and_(b.less(direction, zero), b.less(z_down, zero))
        share_up = b.where(up_side, b.div(relevance, z_up), zero)
        share_down = b.where(down_side, b.div(relevance, z_down), zero)
        return add_each(b, weigh_transposed(b, x_pos, up, share_up), weigh_transposed(b, x_pos, down, share_down),
                        weigh_transposed(b, x_neg, down, share_up), weigh_transposed(b, x_neg, up, share_down))
