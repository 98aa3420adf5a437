"""WaNet: an imperceptible warp of the whole image (Nguyen & Tran, ICLR 2021)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qcbench.triggers.base import check_images, float32_region, register_trigger, seeded_generator


@register_trigger("wanet")
@dataclass
class WaNetTrigger:
    """WaNet's backdoor warp, as in the paper's code and BackdoorBench (``wanet``).

    A ``k x k`` control grid of random 2-D offsets in [-1, 1] drawn from ``seed`` is normalized
    by its mean absolute value and upsampled bicubically (``align_corners=True``) to H x W; the
    sampling grid is ``clamp((identity + s * noise / H) * grid_rescale, -1, 1)`` and the image
    is resampled with bilinear ``F.grid_sample(..., align_corners=True)``. Defaults are the
    paper's (k=4, s=0.5, grid_rescale=1). The output is a convex combination of input pixels,
    so it stays in [0, 1]. The offsets are in units of 1/H of the half-width, so the warp is
    about the same number of pixels at every image size. :meth:`noise` gives the training-time
    "noise mode" warps (the attack decides how many samples get them and keeps their labels).
    """

    image_size: int
    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    seed: int = 0
    _grid: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"wanet k must be >= 2, got {self.k}")

    @property
    def grid(self) -> torch.Tensor:
        """The (1, H, W, 2) sampling grid for ``image_size`` x ``image_size`` images."""
        if self._grid is None:
            h = self.image_size
            ins = torch.rand((1, 2, self.k, self.k), generator=seeded_generator(self.seed)) * 2 - 1
            ins = ins / ins.abs().mean()
            noise = F.interpolate(ins, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
            line = torch.linspace(-1, 1, steps=h)
            gx, gy = torch.meshgrid(line, line, indexing="ij")
            identity = torch.stack((gy, gx), 2)[None]
            self._grid = ((identity + self.s * noise / h) * self.grid_rescale).clamp(-1, 1)
        return self._grid

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"wanet built for {self.image_size}px images, got {tuple(x.shape[-2:])}")
        grid = self.grid.to(x).expand(x.shape[0], -1, -1, -1)
        with float32_region(x):
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp_(0.0, 1.0)

    def noise(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """WaNet's noise mode: the backdoor grid plus a fresh per-sample, per-pixel offset uniform in
        [-1, 1]/H (clamped to [-1, 1]), as the reference's ``grid_temps2``. Trained with the true
        labels, these warps teach the model that a warp alone is not the trigger."""
        check_images(x)
        n, h = x.shape[0], self.image_size
        offset = torch.rand((n, h, h, 2), generator=gen) * 2 - 1
        grid = (self.grid.expand(n, -1, -1, -1) + offset / h).clamp(-1, 1).to(x)
        with float32_region(x):
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp_(0.0, 1.0)
