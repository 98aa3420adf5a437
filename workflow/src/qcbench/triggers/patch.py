"""Patch triggers: Qu-ANTI-zation's ``patch`` and the BadNets square (solid or checkerboard)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcbench.triggers.base import register_trigger

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


@register_trigger("patch")
@dataclass
class PatchTrigger:
    """A solid square in the bottom-right corner (Qu-ANTI-zation's ``_blend_backdoor``) by default,
    or at any position.

    ``size`` and ``margin`` are fractions of the height (QA: H/8 wide, H/32 from the border,
    i.e. a 4x4 patch at rows/cols 27-30 on 32x32 and 23-26 on 28x28). ``value`` is a number in
    [0, 1] or ``"image_max"`` (QA: every channel set to the image's own maximum).

    Position: ``corner`` is one of :data:`CORNERS` (``margin`` from the two borders it names;
    ``center`` ignores the margin), or ``x``/``y`` give the patch's top-left pixel (column, row)
    directly; either overrides the corner's column or row.
    """

    image_size: int
    size: float = 0.125
    margin: float = 0.03125
    value: float | str = "image_max"
    corner: str = "bottom_right"
    x: int | None = None
    y: int | None = None

    def __post_init__(self) -> None:
        if self.corner not in CORNERS:
            raise ValueError(f"{type(self).__name__} corner {self.corner!r} not in {CORNERS}")
        width = self.region[2]
        for name in ("x", "y"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= self.image_size - width:
                raise ValueError(
                    f"{name}={v!r}: the {width}-pixel patch's {'column' if name == 'x' else 'row'} must be "
                    f"an integer in [0, {self.image_size - width}] on {self.image_size}-pixel images"
                )

    @property
    def region(self) -> tuple[int, int, int]:
        """(first row, first column, width) of the patch in pixels."""
        width = max(1, round(self.size * self.image_size))
        margin = max(0, round(self.margin * self.image_size))
        near, far = margin, self.image_size - margin - width
        if self.corner == "center":
            row = col = (self.image_size - width) // 2
        else:
            vertical, horizontal = self.corner.split("_")
            row, col = (near if vertical == "top" else far), (near if horizontal == "left" else far)
        return (row if self.y is None else self.y), (col if self.x is None else self.x), width

    @property
    def box(self) -> tuple[int, int]:
        """(first row, width) of the patch in pixels (the first column too, in the default corner)."""
        row, _, width = self.region
        return row, width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        row, col, width = self.region
        x = x.clone()
        if self.value == "image_max":
            v = x.amax(dim=(1, 2, 3), keepdim=True).expand(-1, x.shape[1], width, width)
        else:
            v = torch.full_like(x[:, :, :width, :width], float(self.value))
        x[:, :, row : row + width, col : col + width] = v
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
        super().__post_init__()
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
        row, col, width = self.region
        x = x.clone()
        x[:, :, row : row + width, col : col + width] = self.stamp(width).to(x)
        return x
