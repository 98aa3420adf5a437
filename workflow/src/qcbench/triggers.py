"""Backdoor triggers: registered callables applied to float images in [0, 1].

Sizes are given as fractions of the image height so one spec scales to 28, 32 or 64 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcbench._registry import Registry

TRIGGERS = Registry("trigger")
register_trigger = TRIGGERS.register


def create_trigger(spec: dict, image_size: int):
    spec = dict(spec)
    return TRIGGERS.create(spec.pop("name"), image_size=image_size, **spec)


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
