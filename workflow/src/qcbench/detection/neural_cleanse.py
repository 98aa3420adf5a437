"""Neural Cleanse (Wang et al., S&P 2019) as BackdoorBench's ``defense/nc.py`` runs it.

For every label t, a mask m (1×1×H×W) and a pattern p (C×H×W), both tanh-parameterised into
[0, 1], are optimised with Adam (lr 0.1, betas 0.5/0.9) so that (1 − m)⊙x + m⊙p is classified
as t on clean defender images, minimising CE + λ‖m‖₁. λ starts at ``init_cost`` and adapts
against the ``attack_succ`` success threshold with ``patience`` epochs: ×``cost_up`` while the
trigger succeeds, ÷``cost_down`` while it does not. A label's norm is the smallest ‖m‖₁ among
epochs whose trigger succeeded (the last mask if none did). Anomaly index =
|norm − median| / (1.4826·MAD); labels *below* the median with an index above
``anomaly_threshold`` (2) are flagged; the model is flagged if any label is.

Budgets are configurable: ``epochs`` × ``steps_per_epoch`` mini-batches of ``batch_size`` per
label (BackdoorBench: up to 80 epochs over the clean subset, with early stopping).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcbench.defenses.base import init_params
from qcbench.detection.base import (
    DetectionInputs,
    Detector,
    Verdict,
    mad_anomaly,
    register_detector,
    require_input_gradient,
)


def reverse_engineer(
    model,
    x: torch.Tensor,
    target: int,
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    init_cost: float,
    attack_succ: float,
    patience: int,
    cost_up: float,
    cost_down: float,
    generator: torch.Generator,
) -> dict:
    """The smallest-norm trigger that sends images ``x`` to ``target``: {norm, success, mask, pattern}."""
    shape = x.shape[1:]
    mask_raw = torch.zeros(1, 1, *shape[1:], requires_grad=True)
    pattern_raw = torch.zeros(1, *shape, requires_grad=True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=lr, betas=(0.5, 0.9))
    cost, up, down = init_cost, 0, 0
    best = None
    for _ in range(epochs):
        hits, seen = 0.0, 0
        for _ in range(steps_per_epoch):
            xb = x[torch.randint(len(x), (batch_size,), generator=generator)]
            mask, pattern = (torch.tanh(mask_raw) + 1) / 2, (torch.tanh(pattern_raw) + 1) / 2
            logits = model((1 - mask) * xb + mask * pattern)
            yt = torch.full((len(xb),), target, dtype=torch.long)
            loss = F.cross_entropy(logits, yt) + cost * mask.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            hits += (logits.argmax(1) == yt).float().sum().item()
            seen += len(xb)
        with torch.no_grad():
            mask, pattern = (torch.tanh(mask_raw) + 1) / 2, (torch.tanh(pattern_raw) + 1) / 2
            norm = mask.abs().sum().item()
        success = hits / seen >= attack_succ
        if success and (best is None or norm < best["norm"]):
            best = {"norm": norm, "success": True, "mask": mask.clone(), "pattern": pattern.clone()}
        up, down = (up + 1, 0) if success else (0, down + 1)
        if up >= patience:
            cost, up = cost * cost_up, 0
        elif down >= patience:
            cost, down = cost / cost_down, 0
    return best or {"norm": norm, "success": False, "mask": mask, "pattern": pattern}


@register_detector("neural_cleanse")
class NeuralCleanse(Detector):
    gradient_based = True

    def __init__(
        self,
        epochs: int = 80,
        steps_per_epoch: int = 10,
        batch_size: int = 128,
        lr: float = 0.1,
        init_cost: float = 1e-3,
        attack_succ: float = 0.98,
        patience: int = 5,
        cost_up: float = 2.0,
        cost_down: float = 2.0**1.5,
        clean_images: int | None = None,
        anomaly_threshold: float = 2.0,
    ) -> None:
        super().__init__(**init_params(locals()))

    def detect(self, model, inputs: DetectionInputs) -> Verdict:
        p = dict(self.params)
        thr, n = p.pop("anomaly_threshold"), p.pop("clean_images")
        x, _ = inputs.clean(n, offset=3)
        for prm in model.parameters():
            prm.requires_grad_(False)
        require_input_gradient(model, x)
        num_classes = inputs.splits.meta["num_classes"]
        gen = inputs.generator(4)
        res = [reverse_engineer(model, x, t, generator=gen, **p) for t in range(num_classes)]
        norms = torch.tensor([r["norm"] for r in res])
        index = mad_anomaly(norms)
        below = norms < torch.quantile(norms, 0.5)
        flagged = [int(t) for t in torch.nonzero(below & (index > thr)).flatten()]
        score = float(index[below].max()) if below.any() else 0.0
        detail = {
            "norms": [round(float(v), 3) for v in norms],
            "anomaly_index": [round(float(v), 3) for v in index],
            "reached_success": [r["success"] for r in res],
            "flagged_labels": flagged,
            "target_flagged": inputs.target in flagged,
        }
        return Verdict(bool(flagged), score, thr, detail)
