"""The LAC paper's ablation tables, each from its config entry ``ablations.<table>`` (the cells:
:func:`qcbench.plan.table_spec`), the paper's values beside ours:

| table | paper | what varies | rows × columns |
| --- | --- | --- | --- |
| ``table4`` | T4 | PDA's γ (defenses of method ``lac`` with ``gamma``) | γ × (attack, bits) |
| ``table5`` | T5 | LAC alone vs LAC+PDA, mean ± std over seeds | components × (attack, bits) |
| ``table7`` | T7 | the adaptive attack | model × (attack, bits) |
| ``table9`` | T9 | clean QAT models: standard quantization vs LAC+PDA | model × attack (BA only) |
| ``table10`` | T10 | PQBackdoor trigger sizes (patch ``size`` × 32 px = the paper's 3×3/4×4/6×6) | model × attack |
| ``table12`` | T12 | PQBackdoor with input-aware and WaNet triggers | model × attack |

The ``triggers`` and ``schemes`` tables take their cells the same way (:mod:`.triggers`,
:mod:`.schemes`).
"""

from __future__ import annotations

from collections.abc import Mapping

from qcbench.plan import IMAGE_SIZES, attack_spec, table_spec
from qcbench.tables._ablation import (
    model_block,
    paper_pair,
    patch_side,
    seeds_note,
    sim_metrics,
    spec_settings,
    trigger_of,
    unconfigured,
)
from qcbench.tables._base import (
    NO_DEFENSE,
    NOT_PRODUCED,
    Block,
    TableContext,
    attack_method,
    cell,
    defense_label,
    fmt,
    paper_defense,
    pick,
    register_table,
    setting_note,
    with_paper,
)


def _sci(x: float) -> str:
    """1e-4, 5e-3 … as the paper's reference keys write γ."""
    mant, exp = f"{float(x):.0e}".split("e")
    return f"{mant}e{int(exp)}"


def _differences(values: dict, key: str, ignore: tuple[str, ...]) -> list[str]:
    """Dotted keys under ``key`` where the attacks' ``values`` differ, each with every value."""
    if all(isinstance(v, Mapping) for v in values.values()):
        subs = sorted({k for v in values.values() for k in v if not (key == "" and k in ignore)})
        return [
            d
            for k in subs
            for d in _differences({a: v.get(k, "unset") for a, v in values.items()}, f"{key}{k}.", ignore)
        ]
    if len({repr(v) for v in values.values()}) == 1:
        return []
    shown = {a: "{…}" if isinstance(v, Mapping) else v for a, v in values.items()}
    return [f"{key.rstrip('.')} (" + ", ".join(f"{a} {v}" for a, v in shown.items()) + ")"]


def spec_differences(
    config: Mapping, attacks: list[str], dataset: str | None = None, ignore: tuple[str, ...] = ("trigger",)
) -> str:
    """A caption note naming every config key (dotted) in which the ``attacks`` of one table
    differ beyond the top-level keys ``ignore``, with each attack's value ("{…}" for a section);
    "" when they differ in nothing else. With ``dataset``, each attack's ``per_dataset`` entry
    for it applies first, as in training. Tables 10 and 12 compare triggers: a reader must see
    any other difference between their cells."""
    specs = {}
    for a in attacks:
        spec = {"method": a, **attack_spec(config, a)}
        if dataset is not None:
            spec |= (spec.pop("per_dataset", None) or {}).get(dataset) or {}
        specs[a] = spec
    parts = _differences(specs, "", ignore)
    return " Besides the trigger, the attacks differ in: " + "; ".join(parts) + "." if parts else ""


@register_table("table4")
def table4(ctx: TableContext) -> list[Block]:
    """Paper Table 4: LAC+PDA under PDA bounds γ (PQBackdoor); rows γ, cells BA / ASR."""
    spec = table_spec(ctx.config, "table4")
    if spec is None:
        return unconfigured("table4", "Table 4 (PDA bound γ)")
    defs = ctx.config.get("defenses") or {}
    rows = sorted(spec["defenses"], key=lambda d: float((defs.get(d) or {}).get("gamma", float("inf"))))
    df = sim_metrics(ctx)
    blocks = []
    for ds, arch, ref in spec_settings(ctx, "table4", spec):
        sub = pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        columns = [(a, b) for a in spec["attacks"] for b in spec["bits"]]
        body = [[NO_DEFENSE] + [cell(pick(sub, attack=a, bits=b, defense="none"), ("ba", "asr")) for a, b in columns]]
        for d in rows:
            gamma = (defs.get(d) or {}).get("gamma")
            label = f"γ = {_sci(gamma)}" if gamma is not None else d
            line = [label + ("" if (defs.get(d) or {}).get("pda", True) else " (no PDA)")]
            for a, b in columns:
                variant = f"gamma={_sci(gamma)}" if gamma is not None else ""
                paper = paper_pair(ctx, "T4", ref, attack_method(ctx, a), "", "lac_pda", variant)
                g = pick(sub, attack=a, bits=b, defense=d)
                line.append(with_paper(cell(g, ("ba", "asr")), paper) + seeds_note(g, spec["seeds"]))
            body.append(line)
        cap = (
            f"Table 4 ({ds}, {arch}): LAC+PDA with PDA's L∞ bound γ, BA / ASR in %, seed(s) "
            f"{', '.join(map(str, spec['seeds']))} (the paper gives no bit width; its values are beside every "
            "column)." + setting_note(ds, arch, ref)
        )
        blocks.append(Block(cap, ["PDA bound"] + [f"{b}-bit {a}" for a, b in columns], body))
    return blocks


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:g}" if std is None else f"{mean:g} ± {std:g}"


@register_table("table5")
def table5(ctx: TableContext) -> list[Block]:
    """Paper Table 5: LAC alone vs LAC+PDA, BA and ASR mean ± std over seeds."""
    spec = table_spec(ctx.config, "table5")
    if spec is None:
        return unconfigured("table5", "Table 5 (LAC vs LAC+PDA)")
    defs = ctx.config.get("defenses") or {}
    df = sim_metrics(ctx)
    blocks = []
    for ds, arch, ref in spec_settings(ctx, "table5", spec):
        sub = pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        columns = [(a, b) for a in spec["attacks"] for b in spec["bits"]]
        body = []
        for d in ["none", *spec["defenses"]]:
            dspec = defs.get(d) or {}
            pda = bool(dspec.get("pda", True)) if dspec.get("method") == "lac" else None
            comp = {True: "lac+pda", False: "lac"}.get(pda, "")
            line = [defense_label(ctx.config, d, ours=False)]
            for a, b in columns:
                g = pick(sub, attack=a, bits=b, defense=d)
                ours = [fmt(g.ba), fmt(g.asr)] if not g.empty else [NOT_PRODUCED, NOT_PRODUCED]
                pdef = "lac_pda" if pda else ("lac" if pda is False else paper_defense(d, b))
                variant = f"components={comp}" if comp else ""
                for i, m in enumerate(("ba", "asr")):
                    val = ctx.paper.value("T5", m, ref[0], ref[1], attack_method(ctx, a), b, pdef, variant)
                    std = ctx.paper.value("T5", f"{m}_std", ref[0], ref[1], attack_method(ctx, a), b, pdef, variant)
                    if val is not None:
                        ours[i] += f" (paper {_pm(val, std)})"
                line += [ours[0], ours[1] + seeds_note(g, spec["seeds"])]
            body.append(line)
        header = ["Components"] + [f"{b}-bit {a} {m}" for a, b in columns for m in ("BA", "ASR")]
        cap = (
            f"Table 5 ({ds}, {arch}): LAC alone vs LAC+PDA, BA and ASR in %, mean ± std over seeds "
            f"{', '.join(map(str, spec['seeds']))}." + setting_note(ds, arch, ref)
        )
        blocks.append(Block(cap, header, body))
    return blocks


@register_table("table7")
def table7(ctx: TableContext) -> list[Block]:
    """Paper Table 7: the adaptive attack (Qu-ANTI-zation + a layer-output error term), no
    defense vs LAC+PDA (the paper gives neither architecture nor bit width)."""
    spec = table_spec(ctx.config, "table7")
    if spec is None:
        return unconfigured("table7", "Table 7 (adaptive attack)")
    return model_block(
        ctx, "table7", "Table 7, adaptive attack", spec, lambda a: "", paper_bits=False,
        column_of=lambda a: f"{a} BA / ASR",
    )  # fmt: skip


@register_table("table9")
def table9(ctx: TableContext) -> list[Block]:
    """Paper Table 9: clean QAT-trained models, full precision, standard quantization and LAC+PDA
    (benign accuracy only)."""
    spec = table_spec(ctx.config, "table9")
    if spec is None:
        return unconfigured("table9", "Table 9 (clean QAT models)")
    blocks = model_block(
        ctx, "table9", "Table 9, clean QAT models", spec, lambda a: "", metrics=("ba",),
        column_of=lambda a: f"{a} BA",
    )  # fmt: skip
    for b in blocks:
        b.body = [[r[0].replace("no defense", "standard quantization")] + r[1:] for r in b.body]
    return blocks


def _trigger_label(ctx: TableContext, attack: str, dataset: str | None = None) -> tuple[str, str]:
    """(paper variant, column label) of a patch-trigger attack: size × 32 px as in the paper."""
    trig = trigger_of(ctx, attack)
    side = patch_side(trig)
    if side is None:
        return "", attack
    label = f"{side}x{side}"
    px = IMAGE_SIZES.get(dataset or "")
    here = f", {max(1, round(float(trig['size']) * px))} px here" if px and px != 32 else ""
    return f"trigger={label}", f"{label} ({attack}{here}) BA / ASR"


@register_table("table10")
def table10(ctx: TableContext) -> list[Block]:
    """Paper Table 10: PQBackdoor with 3×3 / 4×4 / 6×6 patch triggers (sizes as fractions of 32 px)."""
    spec = table_spec(ctx.config, "table10")
    if spec is None:
        return unconfigured("table10", "Table 10 (trigger sizes)")
    blocks = []
    for ds in spec["datasets"]:
        one = dict(spec, datasets=[ds])
        blocks += model_block(
            ctx, "table10", "Table 10, PQBackdoor trigger sizes (side × 32 px as in the paper)", one,
            lambda a: _trigger_label(ctx, a)[0], column_of=lambda a, ds=ds: _trigger_label(ctx, a, ds)[1],
            note=spec_differences(ctx.config, spec["attacks"], ds),
        )  # fmt: skip
    return blocks


@register_table("table12")
def table12(ctx: TableContext) -> list[Block]:
    """Paper Table 12: PQBackdoor with input-aware and WaNet triggers (8-bit)."""
    spec = table_spec(ctx.config, "table12")
    if spec is None:
        return unconfigured("table12", "Table 12 (trigger types)")

    def kind(a: str) -> str:
        return trigger_of(ctx, a).get("name", "")

    return model_block(
        ctx, "table12", "Table 12, PQBackdoor with sample-specific triggers", spec,
        lambda a: f"trigger_type={kind(a)}", column_of=lambda a: f"{kind(a)} ({a}) BA / ASR",
        note=spec_differences(ctx.config, spec["attacks"]),
    )  # fmt: skip
