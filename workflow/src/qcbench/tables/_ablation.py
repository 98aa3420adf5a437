"""What the ablation-style tables share: the cells of a config's ``ablations.<table>`` entry
as rows of the collated metrics, and the layout of Tables 7, 9, 10, 12 and ``schemes`` (rows =
FP model and (bits, defense), columns = attacks)."""

from __future__ import annotations

import pandas as pd

from qcbench.attacks import cell_bits
from qcbench.plan import attack_spec
from qcbench.tables._base import (
    NOT_PRODUCED,
    Block,
    TableContext,
    attack_method,
    cell,
    defense_label,
    paper_defense,
    pick,
    reference_setting,
    setting_note,
    with_paper,
)


def metrics_of(ctx: TableContext) -> pd.DataFrame:
    """The collated metrics; rows without a ``backend`` column are the simulated quantizer's."""
    df = ctx.metrics
    return df if "backend" in df.columns else df.assign(backend="sim")


def sim_metrics(ctx: TableContext) -> pd.DataFrame:
    """The collated metrics of the simulated quantizer (no real int8 runtime rows)."""
    df = metrics_of(ctx)
    return df[df.backend == "sim"]


def spec_settings(ctx: TableContext, table: str, spec: dict):
    """(dataset, arch, the paper's setting to compare with) of each setting of a table's spec."""
    for ds, arch in spec.get("settings") or [(d, a) for d in spec["datasets"] for a in spec["archs"]]:
        yield ds, arch, reference_setting(ctx, table.upper().replace("TABLE", "T"), ds, arch)


def unconfigured(table: str, title: str) -> list[Block]:
    """The one block of a table the config gives no cells."""
    return [Block(f"{title}: no cells configured (config key 'ablations.{table}').", ["–"], [[NOT_PRODUCED]])]


def seeds_note(group: pd.DataFrame, want: list[int]) -> str:
    """The note " [k of n seeds]" after a cell with fewer seeds than the spec asks for."""
    have = sorted(int(s) for s in group.seed.unique()) if not group.empty else []
    return "" if group.empty or len(have) >= len(want) else f" [{len(have)} of {len(want)} seeds]"


def paper_pair(ctx, table, ref, attack, bits, defense, variant="", metrics=("ba", "asr")):
    """The paper's numbers of ``metrics`` for one key in its setting ``ref`` (None where it has none)."""
    return [ctx.paper.value(table, m, ref[0], ref[1], attack, bits, defense, variant) for m in metrics]


def model_rows(ctx: TableContext, spec: dict, none_label: str = "no defense") -> list[tuple[str, int, str, str]]:
    """(label, bits, defense, backend) rows: the FP model, then per bit width no defense (labelled
    ``none_label``), at 8 bits each of the entry's real runtimes (FP model through the runtime's
    PTQ), and each defense."""
    rows = [("Full precision", 32, "none", "sim")]
    for b in spec["bits"]:
        rows.append((f"{b}-bit, {none_label}", b, "none", "sim"))
        if b == 8:
            rows += [(f"8-bit, {r} (real int8 runtime)", b, "none", r) for r in spec.get("backends", [])]
        rows += [(f"{b}-bit, {defense_label(ctx.config, d, ours=False)}", b, d, "sim") for d in spec["defenses"]]
    return rows


def model_block(
    ctx, table, title, spec, variant_of, metrics=("ba", "asr"), paper_bits=True, column_of=None, note="",
    none_label=None,
):  # fmt: skip
    """The layout of Tables 7, 9, 10, 12 and ``schemes``: rows = FP model and (bits, defense), columns = attacks;
    ``note`` ends each caption; ``none_label`` names the no-defense rows (:func:`model_rows`)."""
    df = metrics_of(ctx)
    tid = table.replace("table", "T")
    column_of = column_of or (lambda a: a)
    blocks = []
    for ds, arch, ref in spec_settings(ctx, table, spec):
        sub = pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        body = []
        for label, bits, d, backend in model_rows(ctx, spec, none_label or "no defense"):
            line = [label]
            for a in spec["attacks"]:
                if bits != 32 and not cell_bits(attack_spec(ctx.config, a), [bits]):
                    line.append("–")  # an attack built for other bit widths has no cell here
                    continue
                pd_name = (
                    "standard_quant" if (table == "table9" and d == "none" and bits != 32) else paper_defense(d, bits)
                )
                paper_atk = "clean" if table == "table9" else attack_method(ctx, a)
                pb = bits if paper_bits else ""
                paper = paper_pair(ctx, tid, ref, paper_atk, pb, pd_name, variant_of(a), metrics)
                if backend != "sim":  # the papers report simulated quantizers only
                    paper = [None] * len(metrics)
                g = pick(sub, attack=a, bits=bits, defense=d, backend=backend)
                line.append(with_paper(cell(g, metrics), paper) + seeds_note(g, spec["seeds"]))
            body.append(line)
        seeds = ", ".join(map(str, spec["seeds"]))
        what = " / ".join(m.upper() for m in metrics)
        cap = f"{title} ({ds}, {arch}): {what} in %, seed(s) {seeds}." + note + setting_note(ds, arch, ref)
        blocks.append(Block(cap, ["Model"] + [column_of(a) for a in spec["attacks"]], body))
    return blocks


def trigger_of(ctx: TableContext, attack: str) -> dict:
    """The trigger entry of ``attack`` in the run's config (empty when absent)."""
    return attack_spec(ctx.config, attack).get("trigger") or {}


def patch_side(trig: dict, default: bool = False) -> int | None:
    """A patch trigger's side in the paper's 32-px units (``size`` × 32); with ``default`` the
    registered trigger's own size stands in for a missing one."""
    from qcbench.triggers import TRIGGERS

    size = trig.get("size")
    if size is None and default and trig.get("name") in TRIGGERS:
        size = getattr(TRIGGERS.get(trig["name"]), "size", None)
    return None if size is None else round(float(size) * 32)
