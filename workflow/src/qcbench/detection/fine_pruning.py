"""Fine-pruning as a detector, as the "Quantization Blindspots" benchmark defines it (its
repository; the canonical fine-pruning is a mitigation, qcbench.defenses.fine_pruning).

Fine-pruning's premise is that backdoor neurons lie dormant on clean inputs. The mean |output|
of every channel of every convolution and linear layer (float, simulated or dynamically
quantized) is taken over ``batches`` clean batches of ``batch_size`` defender images; a channel
is dormant below ``dormant_threshold`` (0.01); the model is flagged when the dormant share of
all channels exceeds ``fraction`` (0.3). Score: the dormant share.
"""

from __future__ import annotations

import torch
from torch import nn

from qcbench.defenses.base import init_params
from qcbench.detection.base import LINEAR_TYPES, DetectionInputs, Detector, Verdict, register_detector

LAYER_TYPES = (nn.Conv2d, *LINEAR_TYPES)


@register_detector("fine_pruning")
class FinePruningDetector(Detector):
    def __init__(
        self, batches: int = 10, batch_size: int = 64, dormant_threshold: float = 0.01, fraction: float = 0.3
    ) -> None:
        super().__init__(**init_params(locals()))

    @torch.no_grad()
    def detect(self, model, inputs: DetectionInputs) -> Verdict:
        p = self.params
        x, _ = inputs.clean(p["batches"] * p["batch_size"], offset=7)
        sums: dict[str, torch.Tensor] = {}

        def hook(name):
            def fn(_m, _a, out):
                dims = [d for d in range(out.dim()) if d != 1]
                v = out.detach().float().abs().mean(dim=dims)
                sums[name] = sums.get(name, 0) + v

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
        try:
            n_batches = 0
            for i in range(0, len(x), p["batch_size"]):
                model(x[i : i + p["batch_size"]])
                n_batches += 1
        finally:
            for h in handles:
                h.remove()
        means = torch.cat([s / n_batches for s in sums.values()])
        dormant = means < p["dormant_threshold"]
        share = float(dormant.float().mean())
        per_layer = {n: int(((s / n_batches) < p["dormant_threshold"]).sum()) for n, s in sums.items()}
        detail = {"channels": len(means), "dormant": int(dormant.sum()), "dormant_per_layer": per_layer}
        return Verdict(share > p["fraction"], share, float(p["fraction"]), detail)
