"""Model families and the registry. Importing a family module registers its builders."""

from . import mimic, parnet, preact_resnet, wrn  # noqa: F401  (registration side effects)
from ._registry import create_model, get_default_cfg, is_model, list_models, register_lazy, register_model

# Built on torchvision's ResNet: its module (and torchvision) is imported when one of these is first asked for.
register_lazy("nondeep.models.resnet_small", ["resnet18_small_image", "resnet34_small_image"])
from .blocks import ConvBN, ConvBNAct, FusionBlock, RepVGGBlock, SqueezeGate
from .mimic import ConvShallowMimicNet, ShallowMimicNet
from .parnet import ParNet
from .wrn import WideResNet

__all__ = [
    "create_model", "list_models", "is_model", "get_default_cfg", "register_model",
    "ParNet", "WideResNet", "ShallowMimicNet", "ConvShallowMimicNet",
    "RepVGGBlock", "FusionBlock", "ConvBN", "ConvBNAct", "SqueezeGate",
]
