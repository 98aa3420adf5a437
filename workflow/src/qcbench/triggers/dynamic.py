"""Sample-specific triggers: ``input_aware`` and ``issba``.

Both upstream attacks learn a network that writes the trigger (Input-Aware: a generator trained
jointly with the victim; ISSBA: a pretrained StegaStamp encoder). Neither can be trained or
downloaded here, so both are *stand-ins* with the same interface and invariants: a fixed,
seeded, untrained function of the image that gives each image its own trigger, deterministic
given ``seed`` and independent of the rest of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qcbench.triggers.base import check_images, float32_region, register_trigger, seeded_generator


@register_trigger("input_aware")
@dataclass
class InputAwareTrigger:
    """Input-aware dynamic backdoor (Nguyen & Tran, NeurIPS 2020; BackdoorBench ``inputaware``):
    ``x <- x (1 - m(x)) + p(x) m(x)`` with an image-dependent pattern ``p(x)`` and mask ``m(x)``.

    **Not the trained generator of Nguyen & Tran**: ``p`` and ``m`` come from a small fixed
    convolutional network (3x3 convs C->``width``->``width``, ReLU, then a C-channel pattern
    head and a 1-channel mask head) with He-normal weights drawn from ``seed`` and never
    trained. The pattern is ``tanh(z) / 2 + 1/2`` of the head's output standardized per image
    and channel (upstream's ``tanh / 2 + 0.5``); the mask keeps, on every channel, the
    ``density`` fraction of pixels (at least one) where the mask head is largest, so exactly
    ``round(density * H * W)`` pixel positions change per image (upstream regularizes its soft
    mask towards ``mask_density = 0.032``, the default here).
    """

    image_size: int
    density: float = 0.032
    width: int = 16
    seed: int = 0
    _weights: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"input_aware density must be in (0, 1], got {self.density}")

    def weights(self, c: int) -> list[torch.Tensor]:
        """The generator's conv weights for ``c``-channel images (drawn once from ``seed``)."""
        if c not in self._weights:
            g = seeded_generator(self.seed)
            shapes = [(self.width, c), (self.width, self.width), (c, self.width), (1, self.width)]
            self._weights[c] = [torch.randn((o, i, 3, 3), generator=g) * math.sqrt(2.0 / (9 * i)) for o, i in shapes]
        return self._weights[c]

    def n_pixels(self, h: int, w: int) -> int:
        return max(1, round(self.density * h * w))

    @torch.no_grad()
    def pattern_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pattern (N, C, H, W) in [0, 1] and binary mask (N, 1, H, W) for images ``x``."""
        check_images(x)
        n, c, h, w = x.shape
        w1, w2, wp, wm = (t.to(x.device) for t in self.weights(c))
        feat = F.relu(F.conv2d(x.float() * 2 - 1, w1, padding=1))
        feat = F.relu(F.conv2d(feat, w2, padding=1))
        z = F.conv2d(feat, wp, padding=1)
        z = (z - z.mean(dim=(2, 3), keepdim=True)) / z.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        pattern = torch.tanh(z) / 2 + 0.5
        score = F.conv2d(feat, wm, padding=1).flatten(1)
        idx = score.topk(self.n_pixels(h, w), dim=1).indices
        mask = torch.zeros_like(score).scatter_(1, idx, 1.0).view(n, 1, h, w)
        return pattern.to(x.dtype), mask.to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with float32_region(x):
            pattern, mask = self.pattern_and_mask(x)
        return (x * (1 - mask) + pattern * mask).clamp_(0.0, 1.0)


@register_trigger("issba")
@dataclass
class ISSBATrigger:
    """Invisible sample-specific backdoor (ISSBA, Li et al. ICCV 2021; BackdoorBench ``issba``):
    ``clip(x + r(x), 0, 1)`` with a per-image residual, ``max |r(x)| = eps``.

    **A stand-in for the StegaStamp encoder** (which ISSBA trains to hide the target label's
    string and which we cannot download): ``r(x)`` mixes a fixed seeded random projection of the
    image (mean removed, random sign flip, 2-D FFT, random phase rotation, inverse FFT, random
    sign flip: a fixed orthogonal-like map that spreads every pixel over the whole image, so the
    residual looks like noise and differs per image) with a fixed seeded Gaussian "code" pattern
    (the part every poisoned image shares, as the encoded string is), weighted ``1 - code_weight``
    and ``code_weight`` after standardizing the projection per image, then scales the sum to an
    L-infinity norm of exactly ``eps`` per image (default 8/255).
    """

    image_size: int
    eps: float = 8 / 255
    code_weight: float = 0.5
    seed: int = 0
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"issba eps must be in (0, 1], got {self.eps}")
        if not 0.0 <= self.code_weight <= 1.0:
            raise ValueError(f"issba code_weight must be in [0, 1], got {self.code_weight}")

    def projection(self, shape: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
        """(sign_in, phase, sign_out, code) for images of ``shape`` (drawn once from ``seed``)."""
        shape = tuple(int(s) for s in shape)
        if shape not in self._cache:
            g = seeded_generator(self.seed)
            sign_in = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
            phase = torch.polar(
                torch.ones(shape, dtype=torch.float64),
                torch.rand(shape, generator=g, dtype=torch.float64) * 2 * math.pi,
            )
            sign_out = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
            code = torch.randn(shape, generator=g, dtype=torch.float64)
            self._cache[shape] = (sign_in, phase, sign_out, code / code.std())
        return self._cache[shape]

    @torch.no_grad()
    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual ``r(x)`` (N, C, H, W), ``max |r| = eps`` per image."""
        check_images(x)
        sign_in, phase, sign_out, code = (t.to(x.device) for t in self.projection(x.shape[1:]))
        z = x.double() - x.double().mean(dim=(1, 2, 3), keepdim=True)
        t = torch.fft.ifft2(torch.fft.fft2(z * sign_in) * phase).real * sign_out
        t = t / t.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        r = (1 - self.code_weight) * t + self.code_weight * code
        r = self.eps * r / r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        return r.to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.residual(x)).clamp_(0.0, 1.0)
