"""Image classification with multiplicative blocks: ResNet, PURe (product units), QResNet (quadratic
neurons), Newton-ResNet; data readers (digits, CIFAR-10, Galaxy10 DECaLS, class folders) and a
trainer that runs on one device or many (torchrun).  Command line: ``python -m classify --help``."""
from .models import MODELS, build, count_params, from_config

__all__ = ["MODELS", "build", "count_params", "from_config"]
