"""Backdoor triggers: registered callables applied to float images in [0, 1].

Sizes are given as fractions of the image height so one spec scales to 28, 32 or 64 pixels.
Every trigger takes ``(N, C, H, W)`` floats in [0, 1] (any C) and returns a new tensor of the
same shape and dtype in [0, 1]; randomness comes from the trigger's own ``seed`` only.

| name | module | what it does |
| --- | --- | --- |
| ``patch`` | :mod:`.patch` | Qu-ANTI-zation's bottom-right square (value ``image_max`` or a number) |
| ``badnets`` | :mod:`.patch` | BadNets/Blindspots white (or checkerboard) square, bottom-right |
| ``blended`` | :mod:`.additive` | ``(1 - alpha) x + alpha p``, ``p`` a seeded uniform image |
| ``sig`` | :mod:`.additive` | horizontal sinusoid ``delta sin(2 pi j f / W)`` |
| ``lf`` | :mod:`.additive` | seeded low-pass pattern with an L-infinity budget |
| ``wanet`` | :mod:`.warp` | seeded smooth warp through ``F.grid_sample`` |
| ``input_aware`` | :mod:`.dynamic` | per-image pattern and mask from a fixed random conv net |
| ``issba`` | :mod:`.dynamic` | per-image invisible residual (StegaStamp stand-in) |
"""

from qcbench.triggers.additive import BlendedTrigger, LowFrequencyTrigger, SIGTrigger
from qcbench.triggers.base import TRIGGERS, create_trigger, register_trigger
from qcbench.triggers.dynamic import InputAwareTrigger, ISSBATrigger
from qcbench.triggers.patch import BadNetsTrigger, PatchTrigger
from qcbench.triggers.warp import WaNetTrigger

__all__ = [
    "TRIGGERS",
    "BadNetsTrigger",
    "BlendedTrigger",
    "ISSBATrigger",
    "InputAwareTrigger",
    "LowFrequencyTrigger",
    "PatchTrigger",
    "SIGTrigger",
    "WaNetTrigger",
    "create_trigger",
    "register_trigger",
]
