"""Rendering of collated results into the paper's table layouts.

The contract every table follows (so Markdown, LaTeX and HTML come from one structure):

- a table is a function registered with ``@register_table(name, inputs=(...))``; it takes a
  :class:`TableContext` and returns a list of :class:`Block` (one per dataset/arch, sub-table …);
- ``inputs`` names extra collated files the table needs besides ``results/metrics.parquet``
  (for example ``{"detection": "results/detection.parquet"}``); the ``table`` rule adds them to its
  inputs and :func:`render` loads them into ``ctx.frames``;
- cells are strings; :func:`fmt` / :func:`cell` format mean ± std over seeds and
  :meth:`PaperReference.value` looks a reported number up in config/paper-reference.csv, keyed
  like the paper (table, dataset, arch, attack, bits, defense, variant, metric);
- :func:`to_markdown`, :func:`to_latex` and :func:`to_html` render blocks (HTML: one fragment per
  block, caption and note included, styled by :data:`HTML_STYLE`).
"""

from __future__ import annotations

import hashlib
import html as _html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qcbench._registry import Registry
from qcbench.attacks import cell_bits

TABLES = Registry("table")
NOT_PRODUCED = "not yet produced"

PAPER_NAMES = {
    "none": "No defense",
    "lac": "LAC+PDA (ours)",
    "lac_only": "LAC",
    "efrap": "EFRAP",
    **{d: d.upper() for d in ("ft", "fp", "mcr", "nad")},
    "ibau": "I-BAU",
    "ftsam": "FT-SAM",
}


@dataclass
class Block:
    """One rendered table: a caption (starts with the table's name, e.g. "Table 4 (…)"), a header
    row, body rows of formatted cell strings, and an optional note printed under it."""

    caption: str
    header: list[str]
    body: list[list[str]]
    note: str = ""


class PaperReference:
    """The paper's reported numbers (config/paper-reference.csv, long format, one row per number)."""

    KEYS = ("table", "dataset", "arch", "attack", "bits", "defense", "variant", "metric")

    def __init__(self, frame: pd.DataFrame | None = None) -> None:
        frame = frame if frame is not None else pd.DataFrame(columns=[*self.KEYS, "value"])
        frame = frame.astype({k: "string" for k in self.KEYS}).fillna({k: "" for k in self.KEYS})
        self.frame = frame
        self._index = {tuple(r[k] for k in self.KEYS): float(r["value"]) for _, r in frame.iterrows()}

    @classmethod
    def load(cls, path: str | Path | None) -> PaperReference:
        if path is None or not Path(path).is_file():
            return cls()
        return cls(pd.read_csv(path, dtype=str, keep_default_na=False))

    def value(
        self,
        table: str,
        metric: str,
        dataset: str = "",
        arch: str = "",
        attack: str = "",
        bits: int | str = "",
        defense: str = "",
        variant: str = "",
    ) -> float | None:
        """The paper's number for one key (``table`` like "T1"), or None where it has none."""
        key = (table, dataset, arch, attack, "" if bits in ("", None) else str(bits), defense, variant, metric)
        return self._index.get(key)


@dataclass
class TableContext:
    """What a table function sees: the collated metrics, the workflow config, the paper's numbers
    and any extra collated frames the table declared as ``inputs``."""

    metrics: pd.DataFrame
    config: Mapping = field(default_factory=dict)
    paper: PaperReference = field(default_factory=PaperReference)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def register_table(name: str, inputs: Mapping[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Register ``fn(ctx: TableContext) -> list[Block]`` as table ``name``; ``inputs`` maps frame
    names to extra collated files (paths relative to the workflow's working directory)."""

    def deco(fn: Callable) -> Callable:
        fn.table_inputs = dict(inputs or {})
        return TABLES.register(name)(fn)

    return deco


def table_inputs(name: str) -> dict[str, str]:
    return dict(getattr(TABLES.get(name), "table_inputs", {}))


def fmt(values: pd.Series) -> str:
    """Mean ± sample std of the non-missing values ("–" if none; the value itself if one)."""
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def cell(group: pd.DataFrame | None, cols=("ba", "asr", "der")) -> str:
    """ "BA / ASR / DER" (or the given columns) of one group of rows, or "not yet produced"."""
    if group is None or group.empty:
        return NOT_PRODUCED
    return " / ".join(fmt(group[c]) for c in cols)


def with_paper(ours: str, paper: list[float | None]) -> str:
    """Our cell with the paper's numbers beside it, where the paper has any."""
    if all(v is None for v in paper):
        return ours
    shown = " / ".join("–" if v is None else f"{v:g}" for v in paper)
    return f"{ours} (paper {shown})"


# kept for the existing tables
_fmt = fmt
_cell = cell


def _grid(
    df: pd.DataFrame, rows: list[str], columns: list[tuple], row_key: str, col_keys: tuple, cols
) -> list[list[str]]:
    out = []
    groups = {k: g for k, g in df.groupby([row_key, *col_keys])}
    for r in rows:
        out.append([PAPER_NAMES.get(r, r)] + [cell(groups.get((r, *c)), cols) for c in columns])
    return out


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _latex(header: list[str], body: list[list[str]], caption: str) -> str:
    esc = lambda s: s.replace("±", r"$\pm$").replace("_", r"\_").replace("–", "--")  # noqa: E731
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{esc(caption)}}}",
        r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(map(esc, header)) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(map(esc, r)) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_markdown(blocks: list[Block]) -> str:
    if not blocks:
        return "No metrics yet.\n"
    parts = [f"**{b.caption}**\n\n{_markdown(b.header, b.body)}" + (f"\n\n{b.note}" if b.note else "") for b in blocks]
    return "\n\n".join(parts) + "\n"


def to_latex(blocks: list[Block]) -> str:
    if not blocks:
        return "% no metrics yet\n"
    return "\n".join(_latex(b.header, b.body, b.caption) for b in blocks)


# one style sheet for every table fragment (scoped by class, so fragments can share a page)
HTML_STYLE = """<style>
.qc-block { margin: 1.2em 0 2em 0; overflow-x: auto; }
.qc-table { border-collapse: collapse; font: 13px/1.35 system-ui, sans-serif; }
.qc-table caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 .5em 0; max-width: 60em; }
.qc-table th { border-bottom: 2px solid #333; padding: 4px 10px; text-align: center; vertical-align: bottom; }
.qc-table td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: center; white-space: nowrap; }
.qc-table td:first-child, .qc-table th:first-child { text-align: left; font-weight: 600; }
.qc-table td.qc-ours { background: #eef5ff; }
.qc-table .qc-paper { color: #777; font-size: 88%; display: block; }
.qc-table .qc-missing { color: #999; font-style: italic; }
.qc-note { font: 12px system-ui, sans-serif; color: #555; max-width: 60em; margin: .4em 0 0 0; }
</style>"""
_PAPER_SUFFIX = re.compile(r"^(.*?)( \(paper [^()]*\))$")


def _cell_html(text: str) -> str:
    """A cell as HTML: our value, the paper's value (greyed) and "not yet produced" (italic)."""
    text = str(text)
    m = _PAPER_SUFFIX.match(text)
    ours, paper = (m.group(1), m.group(2)) if m else (text, "")
    ours_html = _html.escape(ours)
    if ours.startswith(NOT_PRODUCED):
        ours_html = f'<span class="qc-missing">{ours_html}</span>'
    return ours_html + (f' <span class="qc-paper">{_html.escape(paper.strip())}</span>' if paper else "")


def _block_html(block: Block) -> str:
    """One block as a pandas-Styler table with its caption, and its note under it."""
    frame = pd.DataFrame(block.body, columns=range(len(block.header)), dtype=object)
    # our method's rows (label contains "(ours)") get a class the style sheet highlights
    ours = ["qc-ours" if row and "(ours)" in str(row[0]) else "" for row in block.body]
    classes = pd.DataFrame([[c] * len(block.header) for c in ours], columns=frame.columns, dtype=object)
    styler = (
        frame.style.hide(axis="index")
        .relabel_index([_html.escape(h) for h in block.header], axis=1)
        .format(_cell_html)
        .set_td_classes(classes)
        .set_caption(_html.escape(block.caption))
        .set_table_attributes('class="qc-table"')
        .set_uuid(hashlib.sha1(block.caption.encode()).hexdigest()[:10])  # stable ids, unique per caption
    )
    table = styler.to_html().replace('<style type="text/css">\n</style>\n', "")
    note = f'<p class="qc-note">{_html.escape(block.note)}</p>' if block.note else ""
    return f'<div class="qc-block">\n{table}{note}\n</div>'


def to_html(blocks: list[Block]) -> str:
    """An HTML fragment (style sheet + one ``div.qc-block`` per block) a browser or notebook shows as is."""
    if not blocks:
        return '<meta charset="utf-8">\n<p class="qc-note">No metrics yet.</p>\n'
    return '<meta charset="utf-8">\n' + HTML_STYLE + "\n" + "\n".join(_block_html(b) for b in blocks) + "\n"


def render(name: str, ctx: TableContext) -> dict[str, str]:
    """Every output format of table ``name``: {"md": …, "tex": …, "html": …}."""
    blocks = TABLES.get(name)(ctx)
    return {"md": to_markdown(blocks), "tex": to_latex(blocks), "html": to_html(blocks)}


# our defense names -> the paper's (config/paper-reference.md); FP rows of "none" are "none_fp"
PAPER_DEFENSES = {"lac": "lac_pda", "lac_only": "lac"}


def paper_defense(defense: str, bits: int) -> str:
    if defense == "none" and int(bits) == 32:
        return "none_fp"
    return PAPER_DEFENSES.get(defense, defense)


def attack_spec(config: Mapping, attack: str) -> dict:
    """The config entry ``attacks.<attack>`` (empty when absent)."""
    return (config.get("attacks") or {}).get(attack) or {}


def attack_method(ctx: TableContext, attack: str) -> str:
    """The registered attack behind a configured attack name (``attacks.<name>.method``)."""
    return attack_spec(ctx.config, attack).get("method", attack)


def reference_setting(ctx: TableContext, table: str, dataset: str, arch: str) -> tuple[str, str]:
    """The paper's (dataset, arch) to compare a block with: the same one where the paper reports
    it, else the paper's main setting for that table (CIFAR-10 / ResNet-18 in T1), stated in the
    caption by the caller."""
    f = ctx.paper.frame
    rows = f[f.table == table]
    if ((rows.dataset == dataset) & (rows.arch == arch)).any() or rows.empty:
        return dataset, arch
    first = rows.iloc[0]
    return str(first.dataset), str(first.arch)


def _setting_note(ds: str, arch: str, ref: tuple[str, str]) -> str:
    return "" if ref == (ds, arch) else f" Paper values (in parentheses): {ref[0]}, {ref[1]}."


# the paper's datasets of Table 2 (Table 1's layout on Tiny-ImageNet); every other dataset is Table 1's
TABLE2_DATASETS = ("tinyimagenet",)
OUR_DEFENSES = {v: k for k, v in PAPER_DEFENSES.items()} | {"none_fp": "none"}
_BITS_ORDER = {"32": 0}


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


def _defense_block(ctx, table, label, dataset, arch, q, ref, rows, columns, seeds) -> Block:
    """One T1-style block: rows = defenses, columns = (bits, attack config name), BA / ASR / DER."""
    groups = {k: g for k, g in q.groupby(["defense", "bits", "attack"])}
    body = []
    for d in rows:
        line = [PAPER_NAMES.get(d, d)]
        for b, a in columns:
            metrics = ("ba", "asr") if d == "none" else ("ba", "asr", "der")
            paper = [ctx.paper.value(table, m, *ref, attack_method(ctx, a), b, paper_defense(d, b)) for m in metrics]
            line.append(with_paper(cell(groups.get((d, b, a)), metrics), paper))
        body.append(line)
    over = f"mean ± std over seeds {seeds}" if seeds else "mean ± std over seeds"
    caption = (
        f"{label} ({dataset}, {arch}): BA / ASR / DER in %, {over}. "
        "ASR excludes target-class images; DER against the no-defense quantized model."
        + _setting_note(dataset, arch, ref)
    )
    header = ["Defense"] + [f"{b}-bit {a}" for b, a in columns]
    return Block(caption, header, body)


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
        blocks.append(
            _defense_block(ctx, table, label, dataset, arch, q, ref, rows, _columns(ctx, bits, attacks), seeds)
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
    (dataset, arch) (Tiny-ImageNet goes to Table 2), plus the full-precision models."""
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
    return [Block(caption, ["Model (dataset)", "No defense BA / ASR", "LAC+PDA BA / ASR / DER"], body, note)]


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
        for bits, d, label in ((32, "none", "Full precision"), (8, "none", "8-bit, no defense"),
                               (8, "lac", "8-bit, LAC+PDA (ours)"), (4, "none", "4-bit, no defense"),
                               (4, "lac", "4-bit, LAC+PDA (ours)")):  # fmt: skip
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
            + _setting_note(dataset, arch, ref)
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
            f"Table 8b ({dataset}, {arch}): simulated 8-bit quantizer (the attack's own scheme) vs real int8 "
            "runtimes (PTQ of the FP model, calibrated on the defender subset), mean ± std over seeds "
            f"{sorted(int(x) for x in q8.seed.unique())}."
        )
        blocks.append(Block(rcap, rheader, real))
    return blocks


# table modules register on import (the table rule's wildcard lists TABLES.names())
from qcbench import ablations as _ablations  # noqa: E402,F401  (registers tables 4, 5, 7, 9, 10, 12)
from qcbench import verdicts as _verdicts  # noqa: E402,F401  (registers the verdicts table)
from qcbench.detection import table as _detection_table  # noqa: E402,F401  (registers the detection table)
