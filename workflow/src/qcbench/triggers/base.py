"""The trigger registry and helpers shared by the trigger families."""

from __future__ import annotations

import torch

from qcbench._registry import Registry

TRIGGERS = Registry("trigger")
register_trigger = TRIGGERS.register


def create_trigger(spec: dict, image_size: int):
    spec = dict(spec)
    return TRIGGERS.create(spec.pop("name"), image_size=image_size, **spec)


def seeded_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: a seeded trigger draws everything from its own stream, never from
    (or into) the global RNG, so it is reproducible and does not disturb training."""
    return torch.Generator().manual_seed(int(seed))


def pixels(fraction: float, image_size: int, minimum: int = 0) -> int:
    """A length given as a fraction of the image height, in whole pixels."""
    return max(minimum, round(fraction * image_size))


def check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"triggers take float images (N, C, H, W) in [0, 1]; got {x.dtype} of shape {tuple(x.shape)}")


def float32_region(x: torch.Tensor):
    """A block that runs in float32 even inside an autocast (``qcbench.train.fit``'s ``amp``): the
    triggers whose stamping uses autocast ops (WaNet's grid sample, the input-aware generator's
    convolutions) run in it, so training stamps the same images as evaluation."""
    return torch.autocast(x.device.type, enabled=False)
