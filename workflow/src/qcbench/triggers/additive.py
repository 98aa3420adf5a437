"""Image-independent full-image triggers: ``blended``, ``sig`` and ``lf``.

Their patterns are drawn for the shape (C, H, W) of the images they meet, from their own
``seed`` (:func:`~qcbench.triggers.base.seeded_generator`), and cached per shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

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
    """Blended (Chen et al. 2017; BackdoorBench ``blended``): ``x <- (1 - alpha·m) x + alpha·m p``.

    BackdoorBench blends a Hello-Kitty picture with ``alpha = 0.2``. That image cannot be
    downloaded here, so by default ``p`` is a fixed uniform random image in [0, 1] drawn from
    ``seed`` (Chen et al.'s "random pattern" variant), one value per channel and pixel, and the
    mask ``m`` is 1 everywhere.

    A trigger of one's own: ``image`` is a picture file (png/jpg, or ``.npy`` read without
    pickle; uint8 or float in [0, 1]) used as ``p``, and ``mask`` a picture of the same size whose
    grey level (0 to 1) is ``m``; with ``alpha = 1`` the image replaces the input where the mask is
    white (``x <- (1 - m) x + m p``, the image-plus-mask form). Both must have the images' height
    and width; ``p`` takes the images' channels (grey or RGB).
    """

    alpha: float = 0.2
    seed: int = 0
    image: str | None = None
    mask: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"blended alpha must be in [0, 1], got {self.alpha}")
        for name in ("image", "mask"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"blended {name} {path!r}: no such file")

    def make_pattern(self, c: int, h: int, w: int) -> torch.Tensor:
        if self.image is None:
            return torch.rand((c, h, w), generator=seeded_generator(self.seed))
        return read_picture(self.image, c, (h, w), "blended image")

    def weight(self, h: int, w: int) -> torch.Tensor:
        """``alpha · m``, (1, H, W), from the ``mask`` file."""
        key = ("mask", h, w)
        if key not in self._cache:
            self._cache[key] = self.alpha * read_picture(self.mask, 1, (h, w), "blended mask")
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        p = self.pattern(x.shape[1:]).to(x)
        if self.mask is None:
            return ((1.0 - self.alpha) * x + self.alpha * p).clamp_(0.0, 1.0)
        m = self.weight(*x.shape[-2:]).to(x)
        return ((1.0 - m) * x + m * p).clamp_(0.0, 1.0)


def read_picture(path: str, channels: int, size: tuple[int, int], what: str) -> torch.Tensor:
    """A float32 (channels, H, W) picture in [0, 1] from an image file (decoded grey for one
    channel, RGB for three) or a ``.npy`` array (H, W), (C, H, W) or (H, W, C), read without
    pickle; its height and width must be ``size``."""
    import numpy as np

    if str(path).endswith(".npy"):
        arr = torch.from_numpy(np.load(path, allow_pickle=False))
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
            arr = arr.permute(2, 0, 1)
        if arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise ValueError(f"{what} {path}: array of shape {tuple(arr.shape)}; give (H, W), (C, H, W) or (H, W, C)")
        arr = arr.float().div(255.0) if arr.dtype == torch.uint8 else arr.float()
        if arr.shape[0] != channels:
            arr = arr.mean(0, keepdim=True) if channels == 1 else arr.expand(channels, -1, -1)
    else:
        from torchvision.io import ImageReadMode, decode_image, read_file

        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            arr = decode_image(read_file(str(path)), mode=mode).float().div(255.0)
        except RuntimeError as err:
            raise ValueError(f"{what} {path}: not a decodable picture ({err})") from None
    if tuple(arr.shape[-2:]) != tuple(size):
        raise ValueError(f"{what} {path}: {tuple(arr.shape[-2:])} pixels, the images have {tuple(size)}")
    if not torch.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{what} {path}: values must lie in [0, 1] (or be uint8)")
    return arr.contiguous()


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
