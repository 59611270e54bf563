"""Errors a user can act on. The CLI prints their message and exits with `exit_code`; anything else is a bug."""


class RcamError(Exception):
    exit_code = 1


class ModelError(RcamError):
    """The model file cannot be read, is not a valid ONNX model, or has no image input or scores we can explain."""


class LayerSelectionError(RcamError):
    """A layer selector matches nothing, or something that is not a layer (a 4-D activation on the image's grid, or
    a transformer's token layer) on the path to the explained scores."""


class UnsupportedOpError(RcamError):
    """An op on the relevance path has no propagator."""

    exit_code = 4  # 2 is click's usage error


class CompositeError(RcamError):
    """An unknown composite or rule name, or a rule given to an op it cannot serve."""


class InternalError(RcamError):
    """onnx-rcam wrote a model that is not valid or does not run: a bug to report, never the user's fault."""

    exit_code = 3
