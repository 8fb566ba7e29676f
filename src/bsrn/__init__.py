"""bsrn: Blueprint Separable Residual Network for efficient single-image super-resolution."""
from .checkpoint import load_model, save_model
from .errors import BsrnError, CheckpointError, ConfigError, ImageError
from .export import export_onnx, export_torchscript
from .models import create_model, list_models
from .rewrite import optimize
from .tiling import forward_tiled
# bsrn.upscale is the function; reach the module's other names with `from bsrn.upscale import`.
from .upscale import Upscaler, upscale

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load_model", "save_model", "BsrnError",
           "CheckpointError", "ConfigError", "ImageError", "Upscaler", "upscale", "forward_tiled",
           "export_onnx", "export_torchscript", "optimize", "__version__"]
