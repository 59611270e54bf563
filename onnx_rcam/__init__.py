"""onnx-rcam: Relevance-CAM generated into ONNX graphs (Lee et al., CVPR 2021).

`augment(model, layers=("auto",))` returns the model with, per layer L, the outputs rcam/L/map, rcam/L/raw,
rcam/L/relevance and rcam/L/activation, plus rcam/class and an optional rcam/target input. See DESIGN.md.
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
