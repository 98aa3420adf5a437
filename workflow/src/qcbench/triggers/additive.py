"""Image-independent full-image triggers: ``blended``, ``sig`` and ``lf``.

Their patterns are drawn for the shape (C, H, W) of the images they meet, from their own
``seed`` (:func:`~qcbench.triggers.base.seeded_generator`), and cached per shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from qcbench.triggers.base import check_images, pixels, register_trigger, seeded_generator


@dataclass
class _CachedPattern:
    """Base for triggers with one fixed pattern per image shape."""

    image_size: int
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def pattern(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The float32 (C, H, W) pattern for images of ``shape``."""
        shape = tuple(int(s) for s in shape)
        if shape not in self._cache:
            self._cache[shape] = self.make_pattern(*shape)
        return self._cache[shape]

    def make_pattern(self, c: int, h: int, w: int) -> torch.Tensor:  # overridden by every subclass
        raise TypeError(f"{type(self).__name__} must define make_pattern(c, h, w)")


@register_trigger("blended")
@dataclass
class BlendedTrigger(_CachedPattern):
    """Blended (Chen et al. 2017; BackdoorBench ``blended``): ``x <- (1 - alpha) x + alpha p``.

    BackdoorBench blends a Hello-Kitty picture with ``alpha = 0.2``. That image cannot be
    downloaded here, so ``p`` is a fixed uniform random image in [0, 1] drawn from ``seed``
    (Chen et al.'s "random pattern" variant), one value per channel and pixel.
    """

    alpha: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"blended alpha must be in [0, 1], got {self.alpha}")

    def make_pattern(self, c: int, h: int, w: int) -> torch.Tensor:
        return torch.rand((c, h, w), generator=seeded_generator(self.seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        p = self.pattern(x.shape[1:]).to(x)
        return ((1.0 - self.alpha) * x + self.alpha * p).clamp_(0.0, 1.0)


@register_trigger("sig")
@dataclass
class SIGTrigger(_CachedPattern):
    """SIG (Barni et al. 2019; BackdoorBench ``sigTriggerAttack``): a horizontal sinusoid
    ``x[..., i, j] + delta * sin(2 pi j f / W)``, the same on every row and channel, clipped to
    [0, 1]. ``delta`` is in [0, 1] units (BackdoorBench: 20 of 255); ``f`` is the number of
    periods across the width, so the signal scales with the image. Deterministic (no seed).
    """

    delta: float = 20 / 255
    f: float = 6

    def make_pattern(self, c: int, h: int, w: int) -> torch.Tensor:
        j = torch.arange(w, dtype=torch.float64)
        row = self.delta * torch.sin(2 * math.pi * j * self.f / w)
        return row.float().expand(c, h, w).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return (x + self.pattern(x.shape[1:]).to(x)).clamp_(0.0, 1.0)


@register_trigger("lf")
@dataclass
class LowFrequencyTrigger(_CachedPattern):
    """Low-frequency trigger (Zeng et al. 2021, "Rethinking the backdoor attacks' triggers: a
    frequency perspective"; BackdoorBench ``lf``): an additive pattern with no high-frequency
    content, ``clip(x + p, 0, 1)`` with ``max |p| = eps``.

    Upstream ``p`` is a universal adversarial perturbation of a clean model, low-pass filtered.
    Here ``p`` is seeded uniform noise in [-1, 1] (per channel) with every 2-D Fourier
    coefficient outside the lowest ``window`` band removed (``|k_y|, |k_x| <= window * H``, at
    least 1; default 3/32, i.e. 3 cycles per image at any size), the mean removed (no
    brightness shift), then scaled to an L-infinity norm of exactly ``eps``.
    """

    eps: float = 0.05
    window: float = 3 / 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"lf eps must be in (0, 1], got {self.eps}")

    def cutoff(self, h: int) -> int:
        """Highest frequency kept (cycles per image) on each axis."""
        return pixels(self.window, h, minimum=1)

    def make_pattern(self, c: int, h: int, w: int) -> torch.Tensor:
        noise = torch.rand((c, h, w), generator=seeded_generator(self.seed), dtype=torch.float64) * 2 - 1
        spec = torch.fft.rfft2(noise)
        k = self.cutoff(h)
        ky = torch.fft.fftfreq(h, d=1.0 / h).abs()[:, None]
        kx = torch.fft.rfftfreq(w, d=1.0 / w)[None, :]
        keep = (ky <= k) & (kx <= k)
        keep[0, 0] = False  # zero mean
        p = torch.fft.irfft2(spec * keep, s=(h, w))
        p = p / p.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        return (self.eps * p).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return (x + self.pattern(x.shape[1:]).to(x)).clamp_(0.0, 1.0)
