"""onnx-rcam: Relevance-CAM generated into ONNX graphs (Lee et al., CVPR 2021).

`augment(model, layers=("auto",))` returns the model with, per method M (rcam by default, the Grad-CAM family, lrp)
and layer L, the outputs M/L/map, M/L/raw, M/L/relevance (M/L/gradient) and M/L/activation, plus rcam/class and the
optional inputs rcam/target and rcam/seed (required instead, for a detector's or segmenter's scores). See
docs/design.md.
"""

from .augment import augment, candidate_layers
from .errors import CompositeError, InternalError, LayerSelectionError, ModelError, RcamError, UnsupportedOpError
from .explainer import Explainer, Explanation
from .models_path import default_model_path
from .overlay import overlay
from .scorecam import ScoreCamExplainer

__version__ = "0.1.0"

__all__ = ["augment", "candidate_layers", "Explainer", "Explanation", "ScoreCamExplainer", "overlay",
           "default_model_path", "RcamError", "ModelError", "LayerSelectionError", "UnsupportedOpError",
           "CompositeError", "InternalError", "__version__"]
