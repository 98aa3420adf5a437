"""Spectral Signatures (Tran et al., NeurIPS 2018) as BackdoorBench's ``defense/spectral.py``
computes them, with a model-level decision rule of ours (BackdoorBench only removes samples).

Per label of the model's (poisoned) training data: centre the penultimate features, take the
top right singular vector v; each sample's outlier score is ⟨r − μ, v⟩², and BackdoorBench
removes the samples above the ``percentile`` (85th) — reported in the detail (poisoned samples
caught, when the data was poisoned). Decision (the spec is silent; documented choice): a poisoned
class mixes two populations, so its top direction carries an unusual share of the class's
variance σ₁² / Σσ². That share is compared across classes with Neural Cleanse's robust anomaly
index (|share − median| / 1.4826·MAD); the model is flagged if a class above the median exceeds
``anomaly_threshold`` (2).
"""

from __future__ import annotations

import torch

from qcbench.defenses.base import init_params
from qcbench.detection.base import DetectionInputs, Detector, Verdict, mad_anomaly, penultimate, register_detector


def outlier_scores(feats: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-sample spectral scores of one class and the top component's share of its variance."""
    centred = feats - feats.mean(0, keepdim=True)
    _, s, vt = torch.linalg.svd(centred.double(), full_matrices=False)
    scores = (centred.double() @ vt[0]).pow(2)
    share = float(s[0] ** 2 / (s**2).sum().clamp_min(1e-12))
    return scores.float(), share


@register_detector("spectral_signatures")
class SpectralSignatures(Detector):
    def __init__(self, inspect_images: int = 5000, percentile: float = 85.0, anomaly_threshold: float = 2.0) -> None:
        super().__init__(**init_params(locals()))

    def detect(self, model, inputs: DetectionInputs) -> Verdict:
        p = self.params
        x, y, poisoned = inputs.inspection_set(p["inspect_images"])
        feats = penultimate(model, x)
        classes, shares, removed = [], [], torch.zeros(len(y), dtype=torch.bool)
        for c in torch.unique(y).tolist():
            idx = torch.nonzero(y == c).flatten()
            if len(idx) < 3:
                continue
            scores, share = outlier_scores(feats[idx])
            cut = torch.quantile(scores, p["percentile"] / 100.0)
            removed[idx[scores > cut]] = True
            classes.append(int(c))
            shares.append(share)
        shares_t = torch.tensor(shares)
        index = mad_anomaly(shares_t)
        above = shares_t > torch.quantile(shares_t, 0.5)
        flagged = [classes[i] for i in torch.nonzero(above & (index > p["anomaly_threshold"])).flatten().tolist()]
        score = float(index[above].max()) if above.any() else 0.0
        detail = {
            "top_share": {c: round(s, 4) for c, s in zip(classes, shares)},
            "anomaly_index": {c: round(float(v), 3) for c, v in zip(classes, index)},
            "flagged_classes": flagged,
            "target_flagged": inputs.target in flagged,
            "poisoned_inspected": int(poisoned.sum()),
            "poisoned_removed": int((removed & poisoned).sum()),
            "removed": int(removed.sum()),
        }
        return Verdict(bool(flagged), score, float(p["anomaly_threshold"]), detail)
