"""The shared layer core: one file per family (docs/design.md)."""
from .encoding import PositionalEncoding
from .gauss import GaussLayer
from .lrnn import LRNNLayer
from .sine import SineLayer, spder_atan, spder_sqrt
from .wire import ComplexGaborLayer, RealGaborLayer

__all__ = ["SineLayer", "spder_sqrt", "spder_atan", "GaussLayer", "RealGaborLayer", "ComplexGaborLayer",
           "PositionalEncoding", "LRNNLayer"]
from .quadratic import QuadraticConv2d, QuadraticLinear  # noqa: E402
__all__ += ["QuadraticLinear", "QuadraticConv2d"]
from .product_unit import ConvPU  # noqa: E402
from .newton import NewtonBlock  # noqa: E402
__all__ += ["ConvPU", "NewtonBlock"]
from .hashgrid import HashGridEncoding  # noqa: E402
__all__ += ["HashGridEncoding"]
