"""VGG-19 with BatchNorm, CIFAR variant (as Qu-ANTI-zation's ``VGG19_BN``).

Sixteen 3x3 conv-BN-ReLU layers (64,64,M,128,128,M,256x4,M,512x4,M,512x4,M), then
Dropout-Linear(512)-ReLU-Dropout-Linear(512)-ReLU-Linear. Convs keep their bias, as upstream and
torchvision do (redundant before BN). Each conv's layer unit is [conv, bn, relu].

Deviations, recorded: the max-pools use ``ceil_mode`` (a 28x28 input ends at 1x1 instead of
vanishing; even sizes are unaffected) and an adaptive average pool to 1x1 precedes the
classifier, so 28/32/64/224 inputs all work (at 32x32 it is a no-op; upstream's Tiny-ImageNet
variant flattens 512x2x2 instead). ``width_div`` divides every width (small local variants).
"""

from __future__ import annotations

from torch import nn

from qcbench.models._registry import register_model
from qcbench.models.layers import Normalize

CFG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg, num_classes, in_channels, mean, std, width_div: int = 1) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers, cin = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            w = v // width_div
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        hidden = 512 // width_div
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(cin, hidden), nn.ReLU(),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # upstream: N(0, 2 / (k*k*out)), zero bias
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(self.normalize(x))
        return self.classifier(self.flatten(self.pool(x)))


@register_model("vgg19_bn")
def vgg19_bn(**kw) -> VGG:
    """VGG-19-BN, CIFAR variant (20.6M parameters at 3x32x32, 10 classes)."""
    return VGG(CFG19, **kw)
