"""The ``detection`` table: rows detectors, columns precisions (per inspected model: each attack,
then the clean model, whose detections are false positives); cells "k/n detected" over seeds,
with "could not run" kept apart from "not detected"."""

from __future__ import annotations

import json

import pandas as pd

from qcbench.report import NOT_PRODUCED, Block, TableContext, fmt, register_table

PRECISION_NAMES = {
    "fp32": "FP32",
    "int8_dynamic": "INT8 dynamic",
    "int8_sim": "INT8 sim",
    "int4_sim": "INT4 sim",
}


def status_cell(rows: pd.DataFrame | None, target: bool = True) -> str:
    """ "k/n detected" over the seeds of one cell; "could not run (n/n)" when no seed ran;
    seeds that could not run are counted apart. ``target``: also say how many detections named
    the attack's target class (for detectors that name one)."""
    if rows is None or rows.empty:
        return NOT_PRODUCED
    n = len(rows)
    failed = int((rows.status == "could_not_run").sum())
    if failed == n:
        return f"could not run ({n}/{n})"
    hits = rows[rows.status == "detected"]
    out = f"{len(hits)}/{n} detected"
    if target and len(hits):
        named = [json.loads(d).get("target_flagged") for d in hits.detail]
        if any(v is not None for v in named):
            out += f" ({sum(bool(v) for v in named)} on target)"
    if failed:
        out += f"; could not run {failed}/{n}"
    return out


def _order(values, preferred) -> list:
    preferred = [p for p in (preferred or []) if p in set(values)]
    return preferred + sorted(v for v in set(values) if v not in preferred)


@register_table("detection", inputs={"detection": "results/detection.parquet"})
def detection(ctx: TableContext) -> list[Block]:
    """Quantization Blindspots: detection rate of five detectors on BadNets models (and on clean
    models: false positives) at FP32, INT8 (PyTorch dynamic and simulated full) and INT4."""
    df = ctx.frames.get("detection")
    cfg = ctx.config.get("detection") or {}
    if df is None or df.empty:
        return [Block("Detection: no detection results yet.", ["Detector"], [[NOT_PRODUCED]])]
    blocks = []
    for (dataset, arch), sub in df.groupby(["dataset", "arch"], sort=True):
        precisions = _order(sub.precision.unique(), cfg.get("precisions"))
        models = _order([a for a in sub.attack.unique() if a != "clean"], cfg.get("attacks"))
        models += ["clean"] if "clean" in set(sub.attack) else []
        columns = [(m, p) for m in models for p in precisions if ((sub.attack == m) & (sub.precision == p)).any()]
        groups = {k: g for k, g in sub.groupby(["detector", "attack", "precision"])}
        header = ["Detector"] + [f"{m} {PRECISION_NAMES.get(p, p)}" for m, p in columns]
        models_ba = sub.drop_duplicates(["attack", "precision", "seed"])
        acc = ["Model BA / ASR (%)"]
        for m, p in columns:
            g = models_ba[(models_ba.attack == m) & (models_ba.precision == p)]
            acc.append(f"{fmt(g.ba)} / {fmt(g.asr)}")
        body = [acc]
        for det in _order(sub.detector.unique(), cfg.get("detectors")):
            body.append([det] + [status_cell(groups.get((det, m, p)), m != "clean") for m, p in columns])
        seeds = sorted(int(s) for s in sub.seed.unique())
        caption = (
            f"Detection ({dataset}, {arch}): models flagged by each detector, over seeds {seeds}, at each "
            "precision. INT8 dynamic = PyTorch quantize_dynamic (converts only Linear layers; no gradient "
            "flows through them), INT8/INT4 sim = qcbench's fully quantized model with straight-through "
            "gradients. 'clean' columns: the clean model, so detections there are false positives."
        )
        note = (
            "'could not run' = the detector failed on that model (e.g. Neural Cleanse needs input gradients), "
            "never counted as 'not detected'. '(t on target)': detections that named the attack's target class. "
            "Blindspots (arXiv 2512.06243) reports 0 % detection for all five detectors at INT8 dynamic on "
            "CIFAR-10/GTSRB; its runner recorded exceptions as 'not detected'."
        )
        blocks.append(Block(caption, header, body, note))
    return blocks


from qcbench.detection import table6 as _table6  # noqa: E402,F401  (registers table6)
