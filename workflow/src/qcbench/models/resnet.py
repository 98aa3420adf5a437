"""ResNets with BatchNorm: a small one for CPU runs and ResNet-18 with the CIFAR stem.

Every ReLU is its own module and every module is called once per forward, so that layer
units (LAC, EFRAP) can be read off the traced graph and hooked by name.
"""

from __future__ import annotations

from torch import nn

from qcbench.models._registry import register_model
from qcbench.models.layers import Normalize, conv_bn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


#: above this input side ``stem="auto"`` takes the ImageNet stem
CIFAR_STEM_MAX = 64


class ResNet(nn.Module):
    """``stem``: ``cifar`` (3x3 conv, stride 1, no max-pool), ``imagenet`` (7x7 conv, stride 2,
    3x3 max-pool, stride 2: a quarter of the side before the first stage) or ``auto`` (the
    ImageNet stem for inputs wider than 64 px, e.g. ImageNette at 224; the CIFAR stem for
    Fashion-MNIST, CIFAR-10, GTSRB and Tiny-ImageNet)."""

    def __init__(
        self, widths, blocks, num_classes, in_channels, mean, std, stem_width=None, stem="cifar", image_size=None
    ) -> None:
        super().__init__()
        stem_width = stem_width or widths[0]
        if stem == "auto":
            stem = "imagenet" if image_size and image_size > CIFAR_STEM_MAX else "cifar"
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"ResNet stem {stem!r}: expected cifar, imagenet or auto")
        self.normalize = Normalize(mean, std)
        if stem == "cifar":
            self.conv1, self.bn1 = conv_bn(in_channels, stem_width, 3, 1)
        else:
            self.conv1, self.bn1 = conv_bn(in_channels, stem_width, 7, 2)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else None
        layers, cin = [], stem_width
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stage = [BasicBlock(cin if j == 0 else w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
            layers.append(nn.Sequential(*stage))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


@register_model("resnet_tiny")
def resnet_tiny(width: int = 16, stem: str = "auto", **kw) -> ResNet:
    """Three stages of one BasicBlock (widths w, 2w, 4w): ~78k parameters at w=16, for CPU."""
    return ResNet((width, 2 * width, 4 * width), (1, 1, 1), stem=stem, **kw)


@register_model("resnet18")
def resnet18(stem: str = "auto", **kw) -> ResNet:
    """ResNet-18, 11.2M parameters: the CIFAR stem (3x3 conv, stride 1, no max-pool) up to 64 px,
    the ImageNet stem above (``stem``, see :class:`ResNet`)."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), stem=stem, **kw)


resnet_tiny.takes_image_size = resnet18.takes_image_size = True  # for stem="auto"
