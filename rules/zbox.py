"""z^B for the input layer, whose values lie in known bounds [low, high] (Montavon et al. 2019, section 10.2.4).

z = W x - W+ low - W- high, a sum of non-negative terms for x in [low, high];
R_i = x_i (W^T c)_i - low_i (W+^T c)_i - high_i (W-^T c)_i with c = R / z, z stabilised by eps * sign(z).
low and high: one value, or one per channel of the NCHW image (the preprocessing maps pixels in [0, 1] to
[(0 - mean) / std, (1 - mean) / std]).
"""

from onnx_rcam.errors import CompositeError

from .base import Rule, add_each, constant_like, negative, positive, weigh


class ZBox(Rule):
    name = "zbox"

    def __init__(self, low=None, high=None, eps: float = 1e-6):
        if low is None or high is None:
            raise CompositeError("rule 'zbox' needs the input's bounds low and high (a value, or one per channel)")
        self.low, self.high, self.eps = low, high, eps

    def linear(self, b, layer, relevance):
        if len(layer.inputs) != 1:
            raise CompositeError(f"rule 'zbox' applies to layers with one input, not {layer.op} with "
                                 f"{len(layer.inputs)}")
        x = layer.inputs[0]
        low, high = constant_like(b, x, self.low), constant_like(b, x, self.high)
        # Negated W+ and W-: the bounds' terms come out subtracted, with no extra pass.
        minus_pos = layer.with_weight(-positive(layer.weight.array))
        minus_neg = layer.with_weight(-negative(layer.weight.array))
        z = b.sum([layer.forward(b, [x]), minus_pos.forward(b, [low]), minus_neg.forward(b, [high])])
        share = b.div(relevance, b.stabilize(z, self.eps))
        return add_each(b, weigh(b, [x], layer.transpose(b, share)), weigh(b, [low], minus_pos.transpose(b, share)),
                        weigh(b, [high], minus_neg.transpose(b, share)))
