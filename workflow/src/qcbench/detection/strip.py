"""STRIP (Gao et al., ACSAC 2019) as BackdoorBench's ``detection_infer/strip.py`` runs it.

Each input is superimposed with ``n_overlays`` clean images (additive, α = 1, saturating at 1:
``cv2.addWeighted(x, 1, bg, 1, 0)``) and its score is the mean entropy of the predictions.
The decision boundary is the ``frr`` quantile (0.1) of the entropies of held-out clean defender
images: an input below it is rejected as poisoned (false-rejection rate ``frr`` on clean data).
Model-level decision (the spec gives only the per-input rule; documented choice): the detector
runs on ``n_inputs`` triggered test images (label ≠ target) and flags the model when it rejects
more than ``flag_share`` (half) of them. A clean model rejects them at about the FRR.
"""

from __future__ import annotations

import torch

from qcbench.defenses.base import init_params
from qcbench.detection.base import DetectionInputs, Detector, Verdict, register_detector
from qcbench.metrics import EVAL_BATCH


@torch.no_grad()
def strip_entropy(model, x: torch.Tensor, backgrounds: torch.Tensor, n_overlays: int, generator, batch_size=EVAL_BATCH):
    """Mean prediction entropy (bits) of each image of ``x`` over ``n_overlays`` superimpositions."""
    out = []
    for img in x:
        bg = backgrounds[torch.randint(len(backgrounds), (n_overlays,), generator=generator)]
        mixed = (img.unsqueeze(0) + bg).clamp_(0, 1)
        probs = torch.cat([model(mixed[i : i + batch_size]).softmax(1) for i in range(0, len(mixed), batch_size)])
        out.append(-(probs * probs.clamp_min(1e-12).log2()).sum(1).mean())
    return torch.stack(out)


@register_detector("strip")
class STRIP(Detector):
    def __init__(
        self, n_overlays: int = 100, n_inputs: int = 100, n_background: int = 500, frr: float = 0.1, flag_share=0.5
    ) -> None:
        super().__init__(**init_params(locals()))

    def detect(self, model, inputs: DetectionInputs) -> Verdict:
        p = self.params
        pool, _ = inputs.clean(p["n_background"] + p["n_inputs"], offset=5)
        backgrounds, held_out = pool[: p["n_background"]], pool[p["n_background"] :]
        gen = inputs.generator(6)
        h_clean = strip_entropy(model, held_out, backgrounds, p["n_overlays"], gen)
        boundary = float(torch.quantile(h_clean, p["frr"]))
        h_trig = strip_entropy(model, inputs.triggered_inputs(p["n_inputs"]), backgrounds, p["n_overlays"], gen)
        rejected = float((h_trig < boundary).float().mean())
        detail = {
            "entropy_boundary": round(boundary, 4),
            "clean_entropy_mean": round(float(h_clean.mean()), 4),
            "triggered_entropy_mean": round(float(h_trig.mean()), 4),
            "triggered_rejected": round(rejected, 4),
        }
        return Verdict(rejected > p["flag_share"], rejected, float(p["flag_share"]), detail)
