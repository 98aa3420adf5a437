"""The ``triggers`` table: each conventional trigger as a plain (BadNets-poisoned) backdoor, its
cells from the config entry ``ablations.triggers``, against the bar a planted backdoor must reach."""

from __future__ import annotations

from qcbench.plan import table_spec
from qcbench.tables._ablation import patch_side, seeds_note, sim_metrics, spec_settings, trigger_of, unconfigured
from qcbench.tables._base import NOT_PRODUCED, Block, TableContext, cell, pick, register_table

# FP ASR a conventional backdoor must reach to count as planted: BadNets' own patch 95 %, every
# other trigger 90 %
TRIGGER_BARS = {"badnets": 95.0}
TRIGGER_BAR = 90.0
# a backdoor that costs more benign accuracy than this (points, against the clean model) is named
BA_DROP = 3.0


def _trigger_name(ctx: TableContext, attack: str) -> str:
    """The trigger's registered name, with a patch's side in the paper's 32-px units."""
    trig = trigger_of(ctx, attack)
    name = trig.get("name", "?")
    side = patch_side(trig, default=True) if name in ("badnets", "patch") else None
    return name if side is None else f"{name} {side}x{side}"


@register_table("triggers")
def triggers(ctx: TableContext) -> list[Block]:
    """Each conventional trigger as a plain backdoor (``badnets`` poisoning with that trigger):
    BA / ASR of the FP model and of each quantized model without defense, and whether the FP ASR
    reaches the bar (95 % for BadNets' patch, 90 % for the others). The note names every attack
    under its bar, with its FP ASR."""
    spec = table_spec(ctx.config, "triggers")
    if spec is None:
        return unconfigured("triggers", "Triggers (conventional backdoors)")
    df = sim_metrics(ctx)
    blocks = []
    for ds, arch, _ref in spec_settings(ctx, "triggers", spec):
        sub = pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        clean = pick(sub, attack="clean", bits=32, defense="none")
        body, short, broken = [], [], []
        for a in spec["attacks"]:
            trig = _trigger_name(ctx, a)
            bar = TRIGGER_BARS.get(trig.split()[0], TRIGGER_BAR)
            fp = pick(sub, attack=a, bits=32, defense="none")
            row = [a, trig, cell(fp, ("ba", "asr")) + seeds_note(fp, spec["seeds"])]
            row += [cell(pick(sub, attack=a, bits=b, defense="none"), ("ba", "asr")) for b in spec["bits"]]
            if fp.empty:
                row += [NOT_PRODUCED, NOT_PRODUCED]
            else:
                asr = float(fp.asr.mean())
                gap = float(fp.ba.mean() - clean[clean.seed.isin(fp.seed)].ba.mean()) if not clean.empty else None
                row.append("–" if gap is None or gap != gap else f"{gap:+.2f}")
                row.append(f"≥ {bar:g}: {'yes' if asr >= bar else 'no'}")
                if asr < bar:
                    short.append(f"{a}{'' if trig == a else f' ({trig})'} {asr:.2f} %")
                if gap is not None and gap < -BA_DROP:
                    broken.append(f"{a} ({gap:+.2f})")
            body.append(row)
        seeds = ", ".join(map(str, spec["seeds"]))
        header = ["Attack", "Trigger", "FP BA / ASR"] + [f"{b}-bit BA / ASR" for b in spec["bits"]]
        header += ["FP BA − clean", "FP ASR bar"]
        cap = (
            f"Triggers ({ds}, {arch}): each conventional trigger as a plain backdoor (BadNets poisoning), "
            f"BA / ASR in %, mean over seed(s) {seeds}; FP BA − clean: against the clean model of the same seeds."
        )
        notes = []
        if short:
            notes.append("Under the ASR bar: " + "; ".join(short) + ".")
        if broken:
            notes.append(f"FP BA more than {BA_DROP:g} points under the clean model: " + "; ".join(broken) + ".")
        note = " ".join(notes)
        blocks.append(Block(cap, header, body, note))
    return blocks
