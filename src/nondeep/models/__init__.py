"""Model families and the registry. Importing a family module registers its builders."""

from . import mimic, parnet, preact_resnet, resnet_small, wrn  # noqa: F401  (registration side effects)
from ._registry import create_model, get_default_cfg, is_model, list_models, register_model
from .blocks import ConvBN, ConvBNAct, FusionBlock, RepVGGBlock, SqueezeGate
from .mimic import ConvShallowMimicNet, ShallowMimicNet
from .parnet import ParNet
from .wrn import WideResNet

__all__ = [
    "create_model", "list_models", "is_model", "get_default_cfg", "register_model",
    "ParNet", "WideResNet", "ShallowMimicNet", "ConvShallowMimicNet",
    "RepVGGBlock", "FusionBlock", "ConvBN", "ConvBNAct", "SqueezeGate",
]
