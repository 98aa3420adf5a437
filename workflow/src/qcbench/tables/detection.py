"""The detection tables: ``detection`` (the "Quantization Blindspots" benchmark: rows detectors,
columns precisions per inspected model, cells "k/n detected" over seeds, with "could not run"
kept apart from "not detected") and ``table6`` (LAC paper Table 6: PDA as a plug-in for NAD and
FT-SAM against conventional backdoors).

Table 6's rows: no defense, then each defense of ``table6.defenses`` (``nad``, ``nad_pda``,
``ftsam``, ``ftsam_pda``); columns: the conventional attacks; cells BA / ASR / DER in % (mean ±
std over seeds) of the FP models, DER against the undefended FP model of the same seed, the
paper's numbers in parentheses (CIFAR-10, PreAct-ResNet18 where our setting differs).
"""

from __future__ import annotations

import json

import pandas as pd

from qcbench.metrics import der
from qcbench.tables._base import (
    NOT_PRODUCED,
    Block,
    TableContext,
    defense_label,
    fmt,
    reference_setting,
    register_table,
    setting_note,
    with_paper,
)

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


def paper_attack(ctx: TableContext, attack: str) -> str:
    """The paper's name of a conventional attack: its trigger (BadNets poisoning with the
    blended / WaNet / … trigger is the Blended / WaNet / … attack)."""
    spec = (ctx.config.get("attacks") or {}).get(attack) or {}
    trigger = (spec.get("trigger") or {}).get("name")
    return trigger if trigger and trigger != "patch" else spec.get("method", attack)


def _der_cell(rows: pd.DataFrame, base: pd.DataFrame) -> str:
    ref = base.set_index("seed")
    vals = [der(ref.loc[r.seed].ba, ref.loc[r.seed].asr, r.ba, r.asr) for r in rows.itertuples() if r.seed in ref.index]
    return fmt(pd.Series(vals, dtype=float))


@register_table("table6")
def table6(ctx: TableContext) -> list[Block]:
    t6 = ctx.config.get("table6") or {}
    m = ctx.metrics
    if m.empty or not t6:
        return [Block("Table 6 (PDA as a plug-in): no results yet.", ["Defense"], [[NOT_PRODUCED]])]
    blocks = []
    for dataset in t6.get("datasets", []):
        for arch in t6.get("archs", []):
            sub = m[(m.dataset == dataset) & (m.arch == arch) & (m.bits == 32) & (m.backend == "sim")]
            sub = sub[sub.seed.isin(t6.get("seeds", []))]
            ref = reference_setting(ctx, "T6", dataset, arch)
            attacks = list(t6.get("attacks", []))
            body = []
            for d in ["none", *t6.get("defenses", [])]:
                line = [defense_label(ctx.config, d)]
                for a in attacks:
                    rows = sub[(sub.attack == a) & (sub.defense == d)]
                    base = sub[(sub.attack == a) & (sub.defense == "none")]
                    metrics = ("ba", "asr") if d == "none" else ("ba", "asr", "der")
                    paper = [ctx.paper.value("T6", k, *ref, paper_attack(ctx, a), "", d) for k in metrics]
                    if rows.empty:
                        ours = NOT_PRODUCED
                    else:
                        parts = [fmt(rows.ba), fmt(rows.asr)] + ([_der_cell(rows, base)] if d != "none" else [])
                        ours = " / ".join(parts)
                    line.append(with_paper(ours, paper))
                body.append(line)
            seeds = sorted(int(s) for s in sub.seed.unique()) or t6.get("seeds", [])
            caption = (
                f"Table 6 ({dataset}, {arch}): PDA as a plug-in for NAD and FT-SAM against conventional backdoors; "
                f"full-precision models, BA / ASR / DER in %, mean ± std over seeds {seeds}; DER against the "
                "undefended model." + setting_note(dataset, arch, ref)
            )
            header = ["Defense"] + [
                f"{a} ({paper_attack(ctx, a)})" if paper_attack(ctx, a) != a else a for a in attacks
            ]
            blocks.append(Block(caption, header, body))
    return blocks
