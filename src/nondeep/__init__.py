"""nondeep: non-deep neural networks on PyTorch (ParNet, Wide ResNets, mimic learning)."""

from . import measure
from .errors import InputShapeError, NondeepError, UnknownModelError
from .models import create_model, get_default_cfg, is_model, list_models
from .reparam import reparameterize_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "is_model", "get_default_cfg", "reparameterize_model", "measure",
           "NondeepError", "UnknownModelError", "InputShapeError"]
