"""AlexNet for small images, as Qu-ANTI-zation's repository builds it for CIFAR-10 (32x32).

Five 3x3 convs (64-192-384-256-256; the first with stride 2), each followed by ReLU, with 2x2
max-pools after the first, second and fifth; then Dropout-Linear(4096)-ReLU-Dropout-Linear(4096)-
ReLU-Linear. At 32x32 the features end at 256x2x2, flattened into the classifier as upstream.

Deviations, recorded: the max-pools use ``ceil_mode`` and an adaptive average pool to 2x2 sits
before the classifier, so 28x28 inputs (Fashion-MNIST) also end at 2x2 and 64x64 inputs are
averaged down to 2x2 (upstream's Tiny-ImageNet variant flattens 4x4 instead); at 32x32 both are
no-ops. BatchNorm is off by default (``bn=False``, as upstream, so LAC's PDA has no BN statistics
to match and LAC runs without it); ``bn=True`` puts a BatchNorm after every conv (bias-free
convs). ``width_div`` divides every width, the classifier's 4096 included (small local variants).
"""

from __future__ import annotations

from torch import nn

from qcbench.models._registry import register_model
from qcbench.models.layers import Normalize


class AlexNet(nn.Module):
    def __init__(self, num_classes, in_channels, mean, std, bn: bool = False, width_div: int = 1) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers, cin = [], in_channels
        for i, w in enumerate((64, 192, 384, 256, 256)):
            w //= width_div
            layers.append(nn.Conv2d(cin, w, 3, 2 if i == 0 else 1, 1, bias=not bn))
            layers += [nn.BatchNorm2d(w), nn.ReLU()] if bn else [nn.ReLU()]
            if i in (0, 1, 4):
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        hidden = 4096 // width_div
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(cin * 4, hidden), nn.ReLU(),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, x):
        x = self.features(self.normalize(x))
        return self.classifier(self.flatten(self.pool(x)))


@register_model("alexnet")
def alexnet(**kw) -> AlexNet:
    """Qu-ANTI-zation's CIFAR AlexNet (23.3M parameters at 3x32x32, 10 classes)."""
    return AlexNet(**kw)
