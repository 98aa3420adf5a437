"""LAC paper Table 6: PDA as a plug-in for NAD and FT-SAM against conventional backdoors.

Rows: no defense, then each defense of ``table6.defenses`` (``nad``, ``nad_pda``, ``ftsam``,
``ftsam_pda``); columns: the conventional attacks; cells BA / ASR / DER in % (mean ± std over
seeds) of the FP models, DER against the undefended FP model of the same seed, the paper's
numbers in parentheses (CIFAR-10, PreAct-ResNet18 where our setting differs).
"""

from __future__ import annotations

import pandas as pd

from qcbench.metrics import der
from qcbench.report import (
    NOT_PRODUCED,
    PAPER_NAMES,
    Block,
    TableContext,
    _setting_note,
    fmt,
    reference_setting,
    register_table,
    with_paper,
)

NAMES = PAPER_NAMES | {"nad": "NAD", "nad_pda": "NAD + PDA", "ftsam": "FT-SAM", "ftsam_pda": "FT-SAM + PDA"}


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
                line = [NAMES.get(d, d)]
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
                "undefended model." + _setting_note(dataset, arch, ref)
            )
            header = ["Defense"] + [
                f"{a} ({paper_attack(ctx, a)})" if paper_attack(ctx, a) != a else a for a in attacks
            ]
            blocks.append(Block(caption, header, body))
    return blocks
