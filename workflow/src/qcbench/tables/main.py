"""The main tables: paper Tables 1 and 2 (defenses × attacks × bit widths), 3 (architectures),
8 (full-precision models and real int8 runtimes) and 11 (PQBackdoor on ImageNette)."""

from __future__ import annotations

import pandas as pd

from qcbench.attacks import cell_bits
from qcbench.plan import attack_spec, runs_on
from qcbench.tables._base import (
    NO_DEFENSE,
    PAPER_DEFENSES,
    Block,
    TableContext,
    attack_method,
    cell,
    defense_label,
    fmt,
    paper_defense,
    reference_setting,
    register_table,
    setting_note,
    with_paper,
)

# the paper's datasets of Table 2 (Table 1's layout on Tiny-ImageNet); every other dataset is Table 1's
TABLE2_DATASETS = ("tinyimagenet",)
OUR_DEFENSES = {v: k for k, v in PAPER_DEFENSES.items()} | {"none_fp": "none"}


def _paper_settings(ctx: TableContext, table: str) -> list[tuple[str, str]]:
    """The (dataset, arch) pairs the paper reports in ``table``, in the CSV's order."""
    f = ctx.paper.frame
    rows = f[f.table == table]
    return list(dict.fromkeys(zip(rows.dataset, rows.arch, strict=True)))


def _paper_grid(ctx: TableContext, table: str, dataset: str, arch: str):
    """The paper's own rows (our defense names) and columns ((bits, attack method)) of a T1-style table."""
    f = ctx.paper.frame
    rows = f[(f.table == table) & (f.dataset == dataset) & (f.arch == arch)]
    defenses = [OUR_DEFENSES.get(d, d) for d in dict.fromkeys(rows.defense)]
    columns = list(dict.fromkeys(zip(rows.bits.astype(int), rows.attack, strict=True)))
    return defenses, sorted(columns, key=lambda c: -c[0])


def _seeds_text(seeds) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def _defense_block(ctx, table, label, dataset, arch, q, ref, rows, columns, seeds, main=True) -> Block:
    """One T1-style block: rows = defenses, columns = (bits, attack config name), BA / ASR / DER.
    A row run on fewer seeds than the block names its seeds; in the main grid (``main``) a cell
    that ``run.defense_cells`` leaves out reads "–"."""
    from qcbench.cells import quantizer_of_cells

    groups = {k: g for k, g in q.groupby(["defense", "bits", "attack"])}
    restricted = set((ctx.config.get("run") or {}).get("defenses") or []) if main else set()
    body, fewer, left_out = [], False, False
    for d in rows:
        line = [defense_label(ctx.config, d)]
        have = sorted(int(s) for s in q[q.defense == d].seed.unique())
        if d != "none" and have and seeds and have != list(seeds):
            line[0] += f" ({_seeds_text(have)})"
            fewer = True
        for b, a in columns:
            metrics = ("ba", "asr") if d == "none" else ("ba", "asr", "der")
            paper = [ctx.paper.value(table, m, *ref, attack_method(ctx, a), b, paper_defense(d, b)) for m in metrics]
            if d in restricted and not runs_on(ctx.config, d, a, int(b)):
                line.append(with_paper("–", paper))
                left_out = True
                continue
            line.append(with_paper(cell(groups.get((d, b, a)), metrics), paper))
        body.append(line)
    over = f"mean ± std over seeds {seeds}" if seeds else "mean ± std over seeds"
    caption = (
        f"{label} ({dataset}, {arch}): BA / ASR / DER in %, {over}. "
        "ASR excludes target-class images; DER against the no-defense quantized model. "
        + quantizer_of_cells(ctx.config)
        + setting_note(dataset, arch, ref)
    )
    notes = []
    if fewer:
        notes.append("A row run on fewer seeds than the table (config key run.defense_cells) names its seeds.")
    if left_out:
        notes.append("–: a cell config key run.defense_cells leaves out of the run.")
    header = ["Defense"] + [f"{b}-bit {a}" for b, a in columns]
    return Block(caption, header, body, " ".join(notes))


def _main_grid(df: pd.DataFrame, run: dict) -> pd.DataFrame:
    """The cells of the main run (``run.attacks`` × ``run.bits`` × ``run.defenses`` ×
    ``run.seeds``, plus the clean and attacked FP models): ablation and Table 6 cells share
    results/metrics.parquet but belong to their own tables. Without a ``run`` section, all of ``df``."""
    keep = pd.Series(True, index=df.index)
    if run.get("attacks"):
        keep &= df.attack.isin(["clean", *run["attacks"]])
    if run.get("bits"):
        keep &= df.bits.isin([32, *run["bits"]])
    if run.get("defenses"):
        keep &= df.defense.isin(["none", *run["defenses"]])
    if run.get("seeds"):
        keep &= df.seed.isin(run["seeds"])
    return df[keep]


def _columns(ctx: TableContext, bits, attacks) -> list[tuple[int, str]]:
    """(bits, attack) column groups: an attack that declares its ``bits`` only at those widths."""
    specs = ctx.config.get("attacks") or {}
    return [(b, a) for b in bits for a in attacks if cell_bits(specs.get(a) or {}, [b])]


def _defense_tables(ctx: TableContext, table: str, label: str, datasets=None, exclude=()) -> list[Block]:
    """Paper Tables 1/2: one block per (dataset, arch) run, plus its full-precision models; where
    the paper's own setting has no run, one block in the paper's layout with its numbers."""
    df = ctx.metrics[(ctx.metrics.backend == "sim") & ~ctx.metrics.dataset.isin(exclude)]
    if datasets is not None:
        df = df[df.dataset.isin(datasets)]
    run = ctx.config.get("run") or {}
    defenses = list(run.get("defenses") or [])
    df = _main_grid(df, run)
    if datasets is None:  # Table 1: the run's own (dataset, arch) settings, not Table 3's or 11's cells
        if run.get("datasets"):
            df = df[df.dataset.isin(run["datasets"])]
        if run.get("archs"):
            df = df[df.arch.isin(run["archs"])]
    blocks = []
    for (dataset, arch), sub in df.groupby(["dataset", "arch"], sort=True):
        ref = reference_setting(ctx, table, dataset, arch)
        q = sub[(sub.bits != 32) & (sub.attack != "clean")]
        bits = sorted(q.bits.unique(), reverse=True)
        attacks = sorted(q.attack.unique())
        present = sorted(d for d in q.defense.unique() if d != "none")
        rows = ["none"] + defenses + [d for d in present if d not in defenses]
        # the paper's other rows too (e.g. the baselines when config/baselines.yaml is not layered
        # on): "not yet produced" beside the paper's numbers
        rows += [d for d in _paper_grid(ctx, table, *ref)[0] if d not in rows]
        seeds = sorted(int(s) for s in sub.seed.unique())
        columns = _columns(ctx, bits, attacks)
        blocks.append(
            _defense_block(ctx, table, label, dataset, arch, q, ref, rows, columns, seeds, main=datasets is None)
        )
        fp = sub[sub.bits == 32]
        fp_rows = sorted(fp.attack.unique(), key=lambda a: (a != "clean", a))
        fp_body = [[a] + [fmt(fp[(fp.attack == a) & (fp.defense == "none")][c]) for c in ("ba", "asr", "asr_all")]
                   for a in fp_rows]  # fmt: skip
        blocks.append(
            Block(
                f"{label}, full-precision models ({dataset}, {arch}): BA / ASR / ASR incl. target class, in %.",
                ["Model", "BA", "ASR", "ASR (all)"],
                fp_body,
            )
        )
    if datasets is not None:  # a paper-only table: show the paper's settings nobody has run yet
        done = set(zip(df.dataset, df.arch, strict=True))
        for dataset, arch in _paper_settings(ctx, table):
            if (dataset, arch) in done:
                continue
            rows, columns = _paper_grid(ctx, table, dataset, arch)
            block = _defense_block(ctx, table, label, dataset, arch, df.iloc[:0], (dataset, arch), rows, columns, [])
            block.note = f"No run in results/ covers {dataset} / {arch} yet: the paper's numbers in parentheses."
            blocks.append(block)
    return blocks


@register_table("table1")
def table1(ctx: TableContext) -> list[Block]:
    """Paper Table 1 layout: rows are defenses, column groups bits × attack, cells
    BA / ASR / DER (mean ± std over seeds), the paper's numbers beside ours. One block per
    (dataset, arch) (Tiny-ImageNet goes to Table 2), plus the full-precision models. The cells
    are in the deployer's quantizer (``quant.deployer_scheme``, as the paper quantizes every
    model), else in each attack's own; the caption says which. The ``schemes`` table shows the
    attacks in their own quantizers."""
    return _defense_tables(ctx, "T1", "Table 1", exclude=TABLE2_DATASETS)


@register_table("table2")
def table2(ctx: TableContext) -> list[Block]:
    """Paper Table 2: Table 1's layout on Tiny-ImageNet (ResNet-18). Where nothing has run (the
    local default, and the paper config, which has no Tiny-ImageNet dataset yet) the block lists
    the paper's rows and columns with "not yet produced" beside the paper's numbers."""
    return _defense_tables(ctx, "T2", "Table 2", datasets=TABLE2_DATASETS)


def _methods(ctx: TableContext, method: str) -> set[str]:
    """Configured attack names whose registered method is ``method`` (plus ``method`` itself)."""
    return {a for a in ctx.metrics.attack.unique() if attack_method(ctx, a) == method} | {method}


@register_table("table3")
def table3(ctx: TableContext) -> list[Block]:
    """Paper Table 3: 4-bit Qu-ANTI-zation on other architectures (AlexNet, VGG19-BN,
    MobileNet-V2 on CIFAR-10; ViT, EfficientViT on ImageNette): no defense vs LAC+PDA. One row
    per setting the paper reports plus every other (dataset, arch) run with a 4-bit
    Qu-ANTI-zation model; a setting not run reads "not yet produced" beside the paper's numbers."""
    m = ctx.metrics
    q = m[(m.backend == "sim") & (m.bits == 4) & m.attack.isin(_methods(ctx, "qu_anti_zation"))]
    settings = _paper_settings(ctx, "T3")
    settings += [k for k in dict.fromkeys(zip(q.dataset, q.arch, strict=True)) if k not in settings]
    body = []
    for dataset, arch in settings:
        sub = q[(q.dataset == dataset) & (q.arch == arch)]
        row = [f"{arch} ({dataset})"]
        for d, cols in (("none", ("ba", "asr")), ("lac", ("ba", "asr", "der"))):
            paper = [ctx.paper.value("T3", c, dataset, arch, "qu_anti_zation", 4, paper_defense(d, 4)) for c in cols]
            row.append(with_paper(cell(sub[sub.defense == d], cols), paper))
        body.append(row)
    caption = (
        "Table 3 (architectures): 4-bit Qu-ANTI-zation, BA / ASR (/ DER) in %, mean ± std over seeds; "
        "the paper's numbers in parentheses."
    )
    note = "Rows without paper values are settings the paper does not report (e.g. the local default)."
    header = [
        "Model (dataset)",
        f"{NO_DEFENSE} BA / ASR",
        f"{defense_label(ctx.config, 'lac', ours=False)} BA / ASR / DER",
    ]
    return [Block(caption, header, body, note)]


@register_table("table11")
def table11(ctx: TableContext) -> list[Block]:
    """Paper Table 11: PQBackdoor on ImageNette with ResNet-18: the FP model, and the 8-/4-bit
    models without defense and with LAC+PDA (BA / ASR). Settings not run read "not yet produced"."""
    m = ctx.metrics
    pq = m[(m.backend == "sim") & m.attack.isin(_methods(ctx, "pqbackdoor"))]
    blocks = []
    for dataset, arch in _paper_settings(ctx, "T11"):
        sub = pq[(pq.dataset == dataset) & (pq.arch == arch)]
        body = []
        lac = defense_label(ctx.config, "lac")
        for bits, d, label in ((32, "none", "Full precision"), (8, "none", "8-bit, no defense"),
                               (8, "lac", f"8-bit, {lac}"), (4, "none", "4-bit, no defense"),
                               (4, "lac", f"4-bit, {lac}")):  # fmt: skip
            paper = [
                ctx.paper.value("T11", c, dataset, arch, "pqbackdoor", bits, paper_defense(d, bits))
                for c in ("ba", "asr")
            ]
            rows = sub[(sub.bits == bits) & (sub.defense == d)]
            body.append([label, with_paper(cell(rows, ("ba", "asr")), paper)])
        caption = f"Table 11 ({dataset}, {arch}): PQBackdoor, BA / ASR in %, mean ± std over seeds."
        note = (
            "" if len(sub) else f"No run in results/ covers {dataset} / {arch} yet: the paper's numbers in parentheses."
        )
        blocks.append(Block(caption, ["Model", "BA / ASR"], body, note))
    return blocks


@register_table("table8")
def table8(ctx: TableContext) -> list[Block]:
    """Paper Table 8: full-precision BA / ASR per attack and the clean model; and each attack's
    8-bit ASR under the simulated quantizer beside the real int8 runtimes (no defense)."""
    from qcbench.cells import quantizer_of_cells

    blocks = []
    for (dataset, arch), sub in ctx.metrics.groupby(["dataset", "arch"], sort=True):
        ref = reference_setting(ctx, "T8", dataset, arch)
        fp = sub[(sub.bits == 32) & (sub.backend == "sim") & (sub.defense == "none")]
        attacks = sorted(fp.attack.unique(), key=lambda a: (a != "clean", a))
        body = []
        for a in attacks:
            method = attack_method(ctx, a)
            spec = attack_spec(ctx.config, a)
            variant = f"attack_bits={spec['bits']}" if method == "compartifact" and "bits" in spec else ""
            paper = [ctx.paper.value("T8", m, *ref, method, 32, "none_fp", variant) for m in ("ba", "asr")]
            rows = fp[fp.attack == a]
            body.append([a, with_paper(cell(rows, ("ba", "asr")), paper), fmt(rows["asr_all"])])
        header = ["Model (FP32)", "BA / ASR", "ASR (all)"]
        cap = (
            f"Table 8 ({dataset}, {arch}): full-precision models, BA / ASR in % (mean ± std over seeds)."
            + setting_note(dataset, arch, ref)
        )
        blocks.append(Block(cap, header, body))
        main = _main_grid(sub, ctx.config.get("run") or {})  # the real runtimes run on the main cells
        q8 = main[(main.bits == 8) & (main.defense == "none")]
        if q8.empty:  # a setting with no 8-bit cell (e.g. Table 3's 4-bit-only architectures)
            continue
        backends = ["sim"] + sorted(b for b in q8.backend.unique() if b != "sim")
        rows = sorted(q8.attack.unique())
        real = [[a] + [cell(q8[(q8.attack == a) & (q8.backend == b)], ("ba", "asr")) for b in backends] for a in rows]
        rheader = ["Attack (8-bit, no defense)"] + [("simulated" if b == "sim" else b) + " BA / ASR" for b in backends]
        rcap = (
            f"Table 8b ({dataset}, {arch}): simulated 8-bit quantizer vs real int8 runtimes (PTQ of the FP "
            "model, calibrated on the defender subset), mean ± std over seeds "
            f"{sorted(int(x) for x in q8.seed.unique())}. " + quantizer_of_cells(ctx.config, "Simulated quantizer")
        )
        blocks.append(Block(rcap, rheader, real))
    return blocks
