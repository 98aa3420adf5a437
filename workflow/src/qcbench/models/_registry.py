from __future__ import annotations

from torch import nn

from qcbench._registry import Registry

MODELS = Registry("arch")
register_model = MODELS.register


def create_model(
    name: str, num_classes: int, in_channels: int, mean, std, image_size: int | None = None, **kwargs
) -> nn.Module:
    """Build a registered architecture; every model normalizes its [0, 1] input itself. An
    architecture sized by its input (a ViT's position embedding) is registered with
    ``takes_image_size = True`` on its factory and gets the dataset's ``image_size`` unless
    ``kwargs`` set one; the others ignore it (they pool adaptively)."""
    if image_size is not None and getattr(MODELS.get(name), "takes_image_size", False):
        kwargs.setdefault("image_size", image_size)
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std, **kwargs)
