"""MobileNet-V2 (Sandler et al., 2018), CIFAR variant.

Stem 3x3 conv (stride ``stem_stride``: 1 for inputs up to 64 px, the CIFAR variant; 2 for
ImageNet-size inputs), seventeen inverted residual blocks, a 1x1 conv to 1280 channels, global
average pool and a linear classifier. A block is a 1x1 expansion conv-BN-ReLU6 (absent when the
expansion is 1), a 3x3 depthwise conv-BN-ReLU6 (``groups`` = channels) and a linear 1x1
projection conv-BN; the input is added back when the stride is 1 and the channel count is
unchanged. As in the CIFAR variant Qu-ANTI-zation uses, the second stage keeps stride 1 (so a
32x32 input ends at 4x4). Widths are scaled by ``width_mult`` and rounded to multiples of 8; the
last conv keeps 1280 channels unless ``width_mult`` > 1 (torchvision's convention).

Deviation from Qu-ANTI-zation's ``MobileNetV2`` (kuangliu's CIFAR code), recorded: that uses
ReLU instead of ReLU6, an expansion conv even at expansion 1, and a 1x1 conv-BN shortcut where a
stride-1 block changes the channel count; this is the paper's (and torchvision's) block.
Every ReLU6 is its own module (layer units, hooks by name).
"""

from __future__ import annotations

from torch import nn

from qcbench.models._registry import register_model
from qcbench.models.layers import Normalize

# (expansion t, output channels c, blocks n, stride of the first block s)
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(v: float, d: int = 8) -> int:
    """Round to the nearest multiple of ``d`` (at least ``d``), never more than 10 % down."""
    out = max(d, int(v + d / 2) // d * d)
    return out + d if out < 0.9 * v else out


def conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = conv_bn_relu6(cin, hidden, 1) if expansion != 1 else []
        layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(
        self, num_classes, in_channels, mean, std, width_mult: float = 1.0, stem_stride: int = 1, cfg=CIFAR_CFG
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        cin = _divisible(32 * width_mult)
        self.stem = nn.Sequential(*conv_bn_relu6(in_channels, cin, 3, stem_stride))
        blocks = []
        for t, c, n, s in cfg:
            cout = _divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = _divisible(1280 * max(1.0, width_mult))
        self.head = nn.Sequential(*conv_bn_relu6(cin, last, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(self.normalize(x)))
        return self.classifier(self.flatten(self.pool(self.head(x))))


@register_model("mobilenet_v2")
def mobilenet_v2(**kw) -> MobileNetV2:
    """MobileNet-V2, CIFAR variant (2.2M parameters at 3x32x32, 10 classes)."""
    return MobileNetV2(**kw)
