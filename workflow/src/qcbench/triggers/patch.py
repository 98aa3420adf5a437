"""Patch triggers: Qu-ANTI-zation's ``patch`` and the BadNets square (solid or checkerboard)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcbench.triggers.base import register_trigger


@register_trigger("patch")
@dataclass
class PatchTrigger:
    """A solid square in the bottom-right corner (Qu-ANTI-zation's ``_blend_backdoor``).

    ``size`` and ``margin`` are fractions of the height (QA: H/8 wide, H/32 from the border,
    i.e. a 4x4 patch at rows/cols 27-30 on 32x32 and 23-26 on 28x28). ``value`` is a number in
    [0, 1] or ``"image_max"`` (QA: every channel set to the image's own maximum).
    """

    image_size: int
    size: float = 0.125
    margin: float = 0.03125
    value: float | str = "image_max"

    @property
    def box(self) -> tuple[int, int]:
        """(first row/col, width) of the patch in pixels."""
        width = max(1, round(self.size * self.image_size))
        margin = max(0, round(self.margin * self.image_size))
        return self.image_size - margin - width, width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start, width = self.box
        x = x.clone()
        if self.value == "image_max":
            v = x.amax(dim=(1, 2, 3), keepdim=True).expand(-1, x.shape[1], width, width)
        else:
            v = torch.full_like(x[:, :, :width, :width], float(self.value))
        x[:, :, start : start + width, start : start + width] = v
        return x


PATTERNS = ("solid", "checkerboard")


@register_trigger("badnets")
@dataclass
class BadNetsTrigger(PatchTrigger):
    """BadNets (Gu et al. 2017) as BackdoorBench and Blindspots stamp it: a white square near the
    bottom-right corner, on every channel.

    ``size`` and ``margin`` are fractions of the height: the default 3/32 with a 1/32 margin is a
    3x3 patch at rows/cols 28-30 on 32x32 (Blindspots: 3x3 white, bottom-right); 4/32 and 6/32
    give the 4x4 and 6x6 variants. ``pattern="checkerboard"`` alternates ``value`` (top-left
    pixel of the patch) and ``low``, the classic BadNets checkerboard.
    """

    size: float = 3 / 32
    margin: float = 1 / 32
    value: float = 1.0
    pattern: str = "solid"
    low: float = 0.0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"badnets pattern {self.pattern!r} not in {PATTERNS}")
        for name in ("value", "low"):
            v = getattr(self, name)
            if isinstance(v, str) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"badnets {name} must be a number in [0, 1], got {v!r}")

    def stamp(self, width: int) -> torch.Tensor:
        """The (width, width) patch."""
        if self.pattern == "solid":
            return torch.full((width, width), float(self.value))
        idx = torch.arange(width)
        even = (idx[:, None] + idx[None, :]) % 2 == 0
        return torch.where(even, torch.tensor(float(self.value)), torch.tensor(float(self.low)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start, width = self.box
        x = x.clone()
        x[:, :, start : start + width, start : start + width] = self.stamp(width).to(x)
        return x
