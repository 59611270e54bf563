"""Rules that redistribute nothing: pass relevance on unchanged, or follow the plain chain rule."""

from onnx_rcam.errors import CompositeError

from .base import Rule


class Pass(Rule):
    name = "pass"

    def linear(self, b, layer, relevance):
        if len(layer.inputs) != 1:
            raise CompositeError(f"rule 'pass' cannot split relevance over the {len(layer.inputs)} inputs of "
                                 f"{layer.op}")
        if not layer.same_shape:
            raise CompositeError(f"rule 'pass' cannot pass relevance through {layer.op}: its output has a different "
                                 f"shape than its input")
        return [relevance]


class Gradient(Rule):
    """The chain rule: W^T R through linear layers, the op's own derivative elsewhere (MaxPool: winner-take-all)."""

    name = "gradient"

    def linear(self, b, layer, relevance):
        return layer.transpose(b, relevance)

    def nonlinear(self, b, op, relevance):
        return op.vjp(b, relevance)
