from __future__ import annotations

from torch import nn

from qcbench._registry import Registry

MODELS = Registry("arch")
register_model = MODELS.register


def create_model(name: str, num_classes: int, in_channels: int, mean, std, **kwargs) -> nn.Module:
    """Build a registered architecture; every model normalizes its [0, 1] input itself."""
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **kwargs)
