"""The LAC paper's ablations: which cells each ablation table needs, and the tables themselves.

The config's ``ablations:`` section names, per paper table, the cells it needs (``attacks``,
``bits``, ``defenses`` besides "none", ``seeds``; ``datasets``/``archs`` default to ``run``'s);
``run.ablations`` lists the tables whose cells ``all`` builds. :func:`ablation_cells` turns them
into metrics paths (every attack's FP model and no-defense cells included), which the workflow
adds to the main run's cells; the generic attack/quantize/defend/evaluate rules build them.

Tables (registered with :func:`qcbench.report.register_table`, paper values beside ours):

| table | paper | what varies | rows × columns |
| --- | --- | --- | --- |
| ``table4`` | T4 | PDA's γ (defenses of method ``lac`` with ``gamma``) | γ × (attack, bits) |
| ``table5`` | T5 | LAC alone vs LAC+PDA, mean ± std over seeds | components × (attack, bits) |
| ``table7`` | T7 | the adaptive attack | model × (attack, bits) |
| ``table9`` | T9 | clean QAT models: standard quantization vs LAC+PDA | model × attack (BA only) |
| ``table10`` | T10 | PQBackdoor trigger sizes (patch ``size`` × 32 px = the paper's 3×3/4×4/6×6) | model × attack |
| ``table12`` | T12 | PQBackdoor with input-aware and WaNet triggers | model × attack |
| ``triggers`` | – | each conventional trigger as a plain (BadNets-poisoned) backdoor, issue #3's bar | attack × model |
| ``schemes`` | – | each attack in its own quantizer and a deployer's (defenses with ``scheme``) | model × attack |
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from qcbench.report import (
    NOT_PRODUCED,
    Block,
    TableContext,
    attack_method,
    attack_spec,
    cell,
    fmt,
    paper_defense,
    reference_setting,
    register_table,
    with_paper,
)

TABLES = ("table4", "table5", "table7", "table9", "table10", "table12", "triggers", "schemes")
#: tables rendered by qcbench.report from the collated metrics whose cells outside the main run
#: (other datasets or architectures) an ``ablations:`` entry may still name: Table 2
#: (Tiny-ImageNet), Table 3 (architectures), Table 11 (ImageNette)
CELL_TABLES = ("table2", "table3", "table11")
SPEC_KEYS = ("datasets", "archs", "attacks", "bits", "defenses", "seeds")
# image side per dataset, only to print a patch trigger's size in pixels
IMAGE_SIZES = {"fashion_mnist": 28, "cifar10": 32, "gtsrb": 32, "tinyimagenet": 64, "imagenette": 224}


# -- cells -----------------------------------------------------------------------------------
def table_spec(cfg: Mapping, table: str) -> dict | None:
    """The cells of one ablation table (``ablations.<table>``, datasets/archs defaulting to
    ``run``'s), or None when the config has no entry for it."""
    entry = (cfg.get("ablations") or {}).get(table)
    if not entry:
        return None
    run = cfg.get("run") or {}
    # an explicitly empty list stays empty (e.g. `defenses: []`); only an absent key takes run's
    spec = {k: list(entry[k] if entry.get(k) is not None else run.get(k) or []) for k in SPEC_KEYS}
    spec["defenses"] = [d for d in spec["defenses"] if d != "none"]
    # the entry's real runtimes among those the run evaluates at all (eval.backends: [] turns them off)
    listed = (cfg.get("eval") or {}).get("backends") or []
    spec["backends"] = [b for b in entry.get("backends") or [] if b in listed]
    # (dataset, arch) pairs: ``settings`` when given (e.g. Table 3's CNNs on CIFAR-10 and its ViT
    # on ImageNette), else every combination of datasets and archs
    if entry.get("settings"):
        spec["settings"] = [(s["dataset"], s["arch"]) for s in entry["settings"]]
        spec["datasets"] = list(dict.fromkeys(d for d, _ in spec["settings"]))
        spec["archs"] = list(dict.fromkeys(a for _, a in spec["settings"]))
    else:
        spec["settings"] = [(d, a) for d in spec["datasets"] for a in spec["archs"]]
    return spec


def ablation_specs(cfg: Mapping) -> dict[str, dict]:
    """{table: spec} for every table in ``run.ablations`` (what ``all`` builds)."""
    enabled = (cfg.get("run") or {}).get("ablations") or []
    return {t: s for t in enabled if (s := table_spec(cfg, t)) is not None}


def _starts_from_clean(cfg: Mapping, attack: str) -> bool:
    """Whether ``attack`` (through any chain of ``init: <attack>``) starts from the clean model."""
    from qcbench.attacks import ATTACKS, init_source

    specs, seen = cfg.get("attacks") or {}, set()
    while attack in specs and attack not in seen:
        seen.add(attack)
        params = specs[attack] or {}
        method = params.get("method", attack)
        if method not in ATTACKS:
            return False
        attack = init_source(method, params)
    return attack == "clean"


def ablation_cells(cfg: Mapping, fp_defenses=()) -> list[str]:
    """Metrics files of every enabled ablation table's cells, in order, without duplicates: each
    attack's FP model, its no-defense quantized cells and its defended cells (an FP-level
    defense in ``fp_defenses`` also gets its purified FP model's row), and the clean model's row
    of each (setting, seed) whose attacks start from it (trained anyway; the verdicts table and
    Table 8 compare with it). An entry's ``backends`` (those also in ``eval.backends``) add its
    8-bit no-defense cells' real-runtime rows (``metrics.<backend>.parquet``). An attack that
    declares the bit widths it trains against gets cells only at those (as in the main grid)."""
    from qcbench.attacks import cell_bits

    out: list[str] = []
    for spec in ablation_specs(cfg).values():
        for ds, arch in spec["settings"]:
            for seed in spec["seeds"]:
                if any(_starts_from_clean(cfg, a) for a in spec["attacks"]):
                    out.append(f"results/{ds}/{arch}/clean/w32/none/seed{seed}/metrics.parquet")
                for atk in spec["attacks"]:
                    base = f"results/{ds}/{arch}/{atk}"
                    out.append(f"{base}/w32/none/seed{seed}/metrics.parquet")
                    out += [f"{base}/w32/{d}/seed{seed}/metrics.parquet" for d in spec["defenses"]
                            if d in fp_defenses]  # fmt: skip
                    bits_of = cell_bits(attack_spec(cfg, atk), spec["bits"])
                    for bits in bits_of:
                        for d in ["none", *spec["defenses"]]:
                            out.append(f"{base}/w{bits}/{d}/seed{seed}/metrics.parquet")
                    if 8 in bits_of:
                        out += [f"{base}/w8/none/seed{seed}/metrics.{b}.parquet" for b in spec["backends"]]
    return list(dict.fromkeys(out))


def config_errors(cfg: Mapping) -> list[str]:
    """Tables and datasets in ``run.ablations`` / ``ablations:`` that point nowhere, and Figure 2's
    missing ``lac`` defense (attack and defense names are checked with the run's, see
    :func:`referenced`)."""
    out = []
    abl = cfg.get("ablations") or {}
    for i, t in enumerate((cfg.get("run") or {}).get("ablations") or []):
        if t not in abl:
            out.append(f"config key 'run.ablations.{i}': table {t!r} has no entry under 'ablations'")
    from qcbench.models import MODELS

    for t, entry in abl.items():
        for i, ds in enumerate((entry or {}).get("datasets") or []):
            if ds not in cfg["data"]["sources"]:
                out.append(f"config key 'ablations.{t}.datasets.{i}': no data source for {ds!r}")
        for i, s in enumerate((entry or {}).get("settings") or []):
            if s["dataset"] not in cfg["data"]["sources"]:
                out.append(f"config key 'ablations.{t}.settings.{i}.dataset': no data source for {s['dataset']!r}")
        archs = [
            (f"ablations.{t}.settings.{i}.arch", s["arch"]) for i, s in enumerate((entry or {}).get("settings") or [])
        ]
        archs += [(f"ablations.{t}.archs.{i}", a) for i, a in enumerate((entry or {}).get("archs") or [])]
        for key, arch in archs:
            if arch not in MODELS:
                out.append(f"config key '{key}': unknown arch {arch!r}; registered: {MODELS.names()}")
            elif arch not in (cfg.get("archs") or {}):
                out.append(f"config key 'archs': no entry for {arch!r} (used by {key}; {{}} for its defaults)")
        from qcbench.backends import BACKENDS

        for i, b in enumerate((entry or {}).get("backends") or []):
            if b not in BACKENDS:
                out.append(
                    f"config key 'ablations.{t}.backends.{i}': unknown runtime {b!r}; registered: {BACKENDS.names()}"
                )
        if entry and entry.get("settings") and (entry.get("datasets") or entry.get("archs")):
            out.append(f"config key 'ablations.{t}': give either settings or datasets/archs, not both")
    for t, spec in ablation_specs(cfg).items():  # the tables `all` builds train clean models there
        for ds in spec["datasets"]:
            if ds not in (cfg.get("clean") or {}) and ds not in (cfg.get("run") or {}).get("datasets", []):
                out.append(f"config key 'clean': no training settings for dataset {ds!r} (ablations.{t})")
    fig2 = (cfg.get("figures") or {}).get("fig2")
    if fig2:
        if (cfg["defenses"].get("lac") or {}).get("method") != "lac":
            out.append("config key 'figures.fig2': needs a defense 'lac' of method 'lac' (LAC+PDA) under 'defenses'")
    return out


def referenced(cfg: Mapping, kind: str) -> list[tuple[str, str]]:
    """(config key, name) of every attack or defense the ablation tables and figures use."""
    out = []
    for t, entry in (cfg.get("ablations") or {}).items():
        out += [(f"ablations.{t}.{kind}.{i}", n) for i, n in enumerate((entry or {}).get(kind) or []) if n != "none"]
    fig2 = (cfg.get("figures") or {}).get("fig2")
    if fig2 and kind == "attacks":
        out.append(("figures.fig2.attack", fig2["attack"]))
    return out


# -- shared rendering helpers -----------------------------------------------------------------
def _metrics(ctx: TableContext) -> pd.DataFrame:
    """The collated metrics; rows without a ``backend`` column are the simulated quantizer's."""
    df = ctx.metrics
    return df if "backend" in df.columns else df.assign(backend="sim")


def _sim(ctx: TableContext) -> pd.DataFrame:
    df = _metrics(ctx)
    return df[df.backend == "sim"]


def _pick(df: pd.DataFrame, **keys) -> pd.DataFrame:
    for k, v in keys.items():
        df = df[df[k] == v]
    return df


def _settings(ctx: TableContext, table: str, spec: dict):
    for ds, arch in spec.get("settings") or [(d, a) for d in spec["datasets"] for a in spec["archs"]]:
        yield ds, arch, reference_setting(ctx, table.upper().replace("TABLE", "T"), ds, arch)


def _note(ds: str, arch: str, ref: tuple[str, str]) -> str:
    if ref == (ds, arch):
        return ""
    shown = ", ".join(r for r in ref if r)
    return f" Paper values (in parentheses): {shown}."


def _spec_or_none(ctx: TableContext, table: str) -> dict | None:
    return table_spec(ctx.config, table)


def _empty(table: str, title: str) -> list[Block]:
    return [Block(f"{title}: no cells configured (config key 'ablations.{table}').", ["–"], [[NOT_PRODUCED]])]


def _seeds_note(group: pd.DataFrame, want: list[int]) -> str:
    have = sorted(int(s) for s in group.seed.unique()) if not group.empty else []
    return "" if group.empty or len(have) >= len(want) else f" [{len(have)} of {len(want)} seeds]"


def _sci(x: float) -> str:
    """1e-4, 5e-3 … as the paper's reference keys write γ."""
    mant, exp = f"{float(x):.0e}".split("e")
    return f"{mant}e{int(exp)}"


def _defense_label(ctx: TableContext, d: str) -> str:
    spec = (ctx.config.get("defenses") or {}).get(d) or {}
    if spec.get("method") == "lac":
        label = "LAC+PDA" if spec.get("pda", True) else "LAC"
    else:
        label = {"efrap": "EFRAP", "requantize": "no defense"}.get(spec.get("method", d), d)
    return f"{label}, in {spec['scheme']}" if spec.get("scheme") else label


def _paper_pair(ctx, table, ref, attack, bits, defense, variant="", metrics=("ba", "asr")):
    return [ctx.paper.value(table, m, ref[0], ref[1], attack, bits, defense, variant) for m in metrics]


def _model_rows(ctx: TableContext, spec: dict) -> list[tuple[str, int, str, str]]:
    """(label, bits, defense, backend) rows: the FP model, then per bit width no defense, at 8 bits
    each of the entry's real runtimes (FP model through the runtime's PTQ), and each defense."""
    rows = [("Full precision", 32, "none", "sim")]
    for b in spec["bits"]:
        rows.append((f"{b}-bit, no defense", b, "none", "sim"))
        if b == 8:
            rows += [(f"8-bit, {r} (real int8 runtime)", b, "none", r) for r in spec.get("backends", [])]
        rows += [(f"{b}-bit, {_defense_label(ctx, d)}", b, d, "sim") for d in spec["defenses"]]
    return rows


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


def _model_block(ctx, table, title, spec, variant_of, metrics=("ba", "asr"), paper_bits=True, column_of=None, note=""):
    """The layout of Tables 7, 9, 10, 12: rows = FP model and (bits, defense), columns = attacks;
    ``note`` ends each caption."""
    from qcbench.attacks import cell_bits

    df = _metrics(ctx)
    tid = table.replace("table", "T")
    column_of = column_of or (lambda a: a)
    blocks = []
    for ds, arch, ref in _settings(ctx, table, spec):
        sub = _pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        body = []
        for label, bits, d, backend in _model_rows(ctx, spec):
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
                paper = _paper_pair(ctx, tid, ref, paper_atk, pb, pd_name, variant_of(a), metrics)
                if backend != "sim":  # the papers report simulated quantizers only
                    paper = [None] * len(metrics)
                g = _pick(sub, attack=a, bits=bits, defense=d, backend=backend)
                line.append(with_paper(cell(g, metrics), paper) + _seeds_note(g, spec["seeds"]))
            body.append(line)
        seeds = ", ".join(map(str, spec["seeds"]))
        what = " / ".join(m.upper() for m in metrics)
        cap = f"{title} ({ds}, {arch}): {what} in %, seed(s) {seeds}." + note + _note(ds, arch, ref)
        blocks.append(Block(cap, ["Model"] + [column_of(a) for a in spec["attacks"]], body))
    return blocks


# -- the tables -------------------------------------------------------------------------------
@register_table("table4")
def table4(ctx: TableContext) -> list[Block]:
    """Paper Table 4: LAC+PDA under PDA bounds γ (PQBackdoor); rows γ, cells BA / ASR."""
    spec = _spec_or_none(ctx, "table4")
    if spec is None:
        return _empty("table4", "Table 4 (PDA bound γ)")
    defs = ctx.config.get("defenses") or {}
    rows = sorted(spec["defenses"], key=lambda d: float((defs.get(d) or {}).get("gamma", float("inf"))))
    df = _sim(ctx)
    blocks = []
    for ds, arch, ref in _settings(ctx, "table4", spec):
        sub = _pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        columns = [(a, b) for a in spec["attacks"] for b in spec["bits"]]
        body = [
            ["No defense"] + [cell(_pick(sub, attack=a, bits=b, defense="none"), ("ba", "asr")) for a, b in columns]
        ]
        for d in rows:
            gamma = (defs.get(d) or {}).get("gamma")
            label = f"γ = {_sci(gamma)}" if gamma is not None else d
            line = [label + ("" if (defs.get(d) or {}).get("pda", True) else " (no PDA)")]
            for a, b in columns:
                variant = f"gamma={_sci(gamma)}" if gamma is not None else ""
                paper = _paper_pair(ctx, "T4", ref, attack_method(ctx, a), "", "lac_pda", variant)
                g = _pick(sub, attack=a, bits=b, defense=d)
                line.append(with_paper(cell(g, ("ba", "asr")), paper) + _seeds_note(g, spec["seeds"]))
            body.append(line)
        cap = (
            f"Table 4 ({ds}, {arch}): LAC+PDA with PDA's L∞ bound γ, BA / ASR in %, seed(s) "
            f"{', '.join(map(str, spec['seeds']))} (the paper gives no bit width; its values are beside every "
            "column)." + _note(ds, arch, ref)
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
    spec = _spec_or_none(ctx, "table5")
    if spec is None:
        return _empty("table5", "Table 5 (LAC vs LAC+PDA)")
    defs = ctx.config.get("defenses") or {}
    df = _sim(ctx)
    blocks = []
    for ds, arch, ref in _settings(ctx, "table5", spec):
        sub = _pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        columns = [(a, b) for a in spec["attacks"] for b in spec["bits"]]
        body = []
        for d in ["none", *spec["defenses"]]:
            dspec = defs.get(d) or {}
            pda = bool(dspec.get("pda", True)) if dspec.get("method") == "lac" else None
            comp = {True: "lac+pda", False: "lac"}.get(pda, "")
            line = ["No defense" if d == "none" else {True: "LAC+PDA", False: "LAC"}.get(pda, d)]
            for a, b in columns:
                g = _pick(sub, attack=a, bits=b, defense=d)
                ours = [fmt(g.ba), fmt(g.asr)] if not g.empty else [NOT_PRODUCED, NOT_PRODUCED]
                pdef = "lac_pda" if pda else ("lac" if pda is False else paper_defense(d, b))
                variant = f"components={comp}" if comp else ""
                for i, m in enumerate(("ba", "asr")):
                    val = ctx.paper.value("T5", m, ref[0], ref[1], attack_method(ctx, a), b, pdef, variant)
                    std = ctx.paper.value("T5", f"{m}_std", ref[0], ref[1], attack_method(ctx, a), b, pdef, variant)
                    if val is not None:
                        ours[i] += f" (paper {_pm(val, std)})"
                line += [ours[0], ours[1] + _seeds_note(g, spec["seeds"])]
            body.append(line)
        header = ["Components"] + [f"{b}-bit {a} {m}" for a, b in columns for m in ("BA", "ASR")]
        cap = (
            f"Table 5 ({ds}, {arch}): LAC alone vs LAC+PDA, BA and ASR in %, mean ± std over seeds "
            f"{', '.join(map(str, spec['seeds']))}." + _note(ds, arch, ref)
        )
        blocks.append(Block(cap, header, body))
    return blocks


@register_table("table7")
def table7(ctx: TableContext) -> list[Block]:
    """Paper Table 7: the adaptive attack (Qu-ANTI-zation + a layer-output error term), no
    defense vs LAC+PDA (the paper gives neither architecture nor bit width)."""
    spec = _spec_or_none(ctx, "table7")
    if spec is None:
        return _empty("table7", "Table 7 (adaptive attack)")
    return _model_block(
        ctx, "table7", "Table 7, adaptive attack", spec, lambda a: "", paper_bits=False,
        column_of=lambda a: f"{a} BA / ASR",
    )  # fmt: skip


@register_table("table9")
def table9(ctx: TableContext) -> list[Block]:
    """Paper Table 9: clean QAT-trained models, full precision, standard quantization and LAC+PDA
    (benign accuracy only)."""
    spec = _spec_or_none(ctx, "table9")
    if spec is None:
        return _empty("table9", "Table 9 (clean QAT models)")
    blocks = _model_block(
        ctx, "table9", "Table 9, clean QAT models", spec, lambda a: "", metrics=("ba",),
        column_of=lambda a: f"{a} BA",
    )  # fmt: skip
    for b in blocks:
        b.body = [[r[0].replace("no defense", "standard quantization")] + r[1:] for r in b.body]
    return blocks


def _trigger_of(ctx: TableContext, attack: str) -> dict:
    """The trigger entry of ``attack`` in the run's config (empty when absent)."""
    return attack_spec(ctx.config, attack).get("trigger") or {}


def _patch_side(trig: dict, default: bool = False) -> int | None:
    """A patch trigger's side in the paper's 32-px units (``size`` × 32); with ``default`` the
    registered trigger's own size stands in for a missing one."""
    from qcbench.triggers import TRIGGERS

    size = trig.get("size")
    if size is None and default and trig.get("name") in TRIGGERS:
        size = getattr(TRIGGERS.get(trig["name"]), "size", None)
    return None if size is None else round(float(size) * 32)


def _trigger_label(ctx: TableContext, attack: str, dataset: str | None = None) -> tuple[str, str]:
    """(paper variant, column label) of a patch-trigger attack: size × 32 px as in the paper."""
    trig = _trigger_of(ctx, attack)
    side = _patch_side(trig)
    if side is None:
        return "", attack
    label = f"{side}x{side}"
    px = IMAGE_SIZES.get(dataset or "")
    here = f", {max(1, round(float(trig['size']) * px))} px here" if px and px != 32 else ""
    return f"trigger={label}", f"{label} ({attack}{here}) BA / ASR"


@register_table("table10")
def table10(ctx: TableContext) -> list[Block]:
    """Paper Table 10: PQBackdoor with 3×3 / 4×4 / 6×6 patch triggers (sizes as fractions of 32 px)."""
    spec = _spec_or_none(ctx, "table10")
    if spec is None:
        return _empty("table10", "Table 10 (trigger sizes)")
    blocks = []
    for ds in spec["datasets"]:
        one = dict(spec, datasets=[ds])
        blocks += _model_block(
            ctx, "table10", "Table 10, PQBackdoor trigger sizes (side × 32 px as in the paper)", one,
            lambda a: _trigger_label(ctx, a)[0], column_of=lambda a, ds=ds: _trigger_label(ctx, a, ds)[1],
            note=spec_differences(ctx.config, spec["attacks"], ds),
        )  # fmt: skip
    return blocks


@register_table("table12")
def table12(ctx: TableContext) -> list[Block]:
    """Paper Table 12: PQBackdoor with input-aware and WaNet triggers (8-bit)."""
    spec = _spec_or_none(ctx, "table12")
    if spec is None:
        return _empty("table12", "Table 12 (trigger types)")

    def kind(a: str) -> str:
        return _trigger_of(ctx, a).get("name", "")

    return _model_block(
        ctx, "table12", "Table 12, PQBackdoor with sample-specific triggers", spec,
        lambda a: f"trigger_type={kind(a)}", column_of=lambda a: f"{kind(a)} ({a}) BA / ASR",
        note=spec_differences(ctx.config, spec["attacks"]),
    )  # fmt: skip


# FP ASR a conventional backdoor must reach to count as planted (issue #3): BadNets' own patch
# 95 %, every other trigger 90 %
TRIGGER_BARS = {"badnets": 95.0}
TRIGGER_BAR = 90.0
# a backdoor that costs more benign accuracy than this (points, against the clean model) is named
BA_DROP = 3.0


def _trigger_name(ctx: TableContext, attack: str) -> str:
    """The trigger's registered name, with a patch's side in the paper's 32-px units."""
    trig = _trigger_of(ctx, attack)
    name = trig.get("name", "?")
    side = _patch_side(trig, default=True) if name in ("badnets", "patch") else None
    return name if side is None else f"{name} {side}x{side}"


@register_table("triggers")
def triggers(ctx: TableContext) -> list[Block]:
    """Each conventional trigger as a plain backdoor (``badnets`` poisoning with that trigger):
    BA / ASR of the FP model and of each quantized model without defense, and whether the FP ASR
    reaches the bar (95 % for BadNets' patch, 90 % for the others). The note names every attack
    under its bar, with its FP ASR."""
    spec = _spec_or_none(ctx, "triggers")
    if spec is None:
        return _empty("triggers", "Triggers (conventional backdoors)")
    df = _sim(ctx)
    blocks = []
    for ds, arch, _ref in _settings(ctx, "triggers", spec):
        sub = _pick(df, dataset=ds, arch=arch)
        sub = sub[sub.seed.isin(spec["seeds"])] if not sub.empty else sub
        clean = _pick(sub, attack="clean", bits=32, defense="none")
        body, short, broken = [], [], []
        for a in spec["attacks"]:
            trig = _trigger_name(ctx, a)
            bar = TRIGGER_BARS.get(trig.split()[0], TRIGGER_BAR)
            fp = _pick(sub, attack=a, bits=32, defense="none")
            row = [a, trig, cell(fp, ("ba", "asr")) + _seeds_note(fp, spec["seeds"])]
            row += [cell(_pick(sub, attack=a, bits=b, defense="none"), ("ba", "asr")) for b in spec["bits"]]
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


@register_table("schemes")
def schemes(ctx: TableContext) -> list[Block]:
    """Each attack in the quantizer it was built against and in a deployer's: the entry's
    defenses that name a ``scheme`` (``requantize``: no defense; LAC+PDA …) quantize the FP model
    with that family instead of the attack's (:mod:`qcbench.defenses.requantize`). Whether a
    backdoor fires outside its own quantizer is issue #3's pitfall; whether LAC+PDA keeps the
    FP model's BA depends on the grid it may round to (issue #4's 1-point bar)."""
    spec = _spec_or_none(ctx, "schemes")
    if spec is None:
        return _empty("schemes", "Quantizers (attack's vs deployer's)")
    from qcbench.attacks import declared_scheme

    def own(a: str) -> str:  # the attack's declared scheme, as the quantize stage picks it
        return declared_scheme(attack_spec(ctx.config, a), (ctx.config.get("quant") or {}).get("default_scheme"))

    return _model_block(
        ctx, "schemes", "Quantizers: each attack in its own scheme and in the deployer's", spec,
        lambda a: "", column_of=lambda a: f"{a} ({own(a)}) BA / ASR",
        note=" Rows without \"in <scheme>\" use the attack's own scheme (in the column header); "
        "\"–\": the attack is not built for that bit width.",
    )  # fmt: skip
