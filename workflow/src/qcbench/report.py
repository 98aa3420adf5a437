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
- :func:`to_markdown` and :func:`to_latex` render blocks (HTML: ``to_html``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qcbench._registry import Registry

TABLES = Registry("table")
NOT_PRODUCED = "not yet produced"

PAPER_NAMES = {"none": "No defense", "lac": "LAC+PDA (ours)", "lac_only": "LAC", "efrap": "EFRAP"}


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


def render(name: str, ctx: TableContext) -> dict[str, str]:
    """Every output format of table ``name``: {"md": …, "tex": …}."""
    blocks = TABLES.get(name)(ctx)
    return {"md": to_markdown(blocks), "tex": to_latex(blocks)}


# our defense names -> the paper's (config/paper-reference.md); FP rows of "none" are "none_fp"
PAPER_DEFENSES = {"lac": "lac_pda", "lac_only": "lac"}


def paper_defense(defense: str, bits: int) -> str:
    if defense == "none" and int(bits) == 32:
        return "none_fp"
    return PAPER_DEFENSES.get(defense, defense)


def attack_method(ctx: TableContext, attack: str) -> str:
    """The registered attack behind a configured attack name (``attacks.<name>.method``)."""
    spec = (ctx.config.get("attacks") or {}).get(attack) or {}
    return spec.get("method", attack)


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


@register_table("table1")
def table1(ctx: TableContext) -> list[Block]:
    """Paper Table 1 layout: rows are defenses, column groups bits × attack, cells
    BA / ASR / DER (mean ± std over seeds), the paper's numbers beside ours. One block per
    (dataset, arch), plus the full-precision models."""
    df = ctx.metrics[ctx.metrics.backend == "sim"]
    defenses = list((ctx.config.get("run") or {}).get("defenses") or [])
    blocks = []
    for (dataset, arch), sub in df.groupby(["dataset", "arch"], sort=True):
        ref = reference_setting(ctx, "T1", dataset, arch)
        q = sub[(sub.bits != 32) & (sub.attack != "clean")]
        bits = sorted(q.bits.unique(), reverse=True)
        attacks = sorted(q.attack.unique())
        present = sorted(d for d in q.defense.unique() if d != "none")
        rows = ["none"] + [d for d in defenses if d in present] + [d for d in present if d not in defenses]
        columns = [(b, a) for b in bits for a in attacks]
        groups = {k: g for k, g in q.groupby(["defense", "bits", "attack"])}
        body = []
        for d in rows:
            line = [PAPER_NAMES.get(d, d)]
            for b, a in columns:
                metrics = ("ba", "asr") if d == "none" else ("ba", "asr", "der")
                paper = [ctx.paper.value("T1", m, *ref, attack_method(ctx, a), b, paper_defense(d, b)) for m in metrics]
                line.append(with_paper(cell(groups.get((d, b, a)), metrics), paper))
            body.append(line)
        seeds = sorted(int(s) for s in sub.seed.unique())
        caption = (
            f"Table 1 ({dataset}, {arch}): BA / ASR / DER in %, mean ± std over seeds {seeds}. "
            "ASR excludes target-class images; DER against the no-defense quantized model."
            + _setting_note(dataset, arch, ref)
        )
        header = ["Defense"] + [f"{b}-bit {a}" for b, a in columns]
        blocks.append(Block(caption, header, body))
        fp = sub[sub.bits == 32]
        fp_rows = sorted(fp.attack.unique(), key=lambda a: (a != "clean", a))
        fp_body = [[a] + [fmt(fp[(fp.attack == a) & (fp.defense == "none")][c]) for c in ("ba", "asr", "asr_all")]
                   for a in fp_rows]  # fmt: skip
        blocks.append(
            Block(
                f"Table 1, full-precision models ({dataset}, {arch}): BA / ASR / ASR incl. target class, in %.",
                ["Model", "BA", "ASR", "ASR (all)"],
                fp_body,
            )
        )
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
            spec = (ctx.config.get("attacks") or {}).get(a) or {}
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
        q8 = sub[(sub.bits == 8) & (sub.defense == "none")]
        backends = ["sim"] + sorted(b for b in q8.backend.unique() if b != "sim")
        rows = sorted(q8.attack.unique())
        real = [[a] + [cell(q8[(q8.attack == a) & (q8.backend == b)], ("ba", "asr")) for b in backends] for a in rows]
        rheader = ["Attack (8-bit, no defense)"] + [("simulated" if b == "sim" else b) + " BA / ASR" for b in backends]
        rcap = (
            f"Table 8b ({dataset}, {arch}): simulated 8-bit quantizer (the attack's own scheme) vs real int8 "
            "runtimes (PTQ of the FP model, calibrated on the defender subset)."
        )
        blocks.append(Block(rcap, rheader, real))
    return blocks


from qcbench.detection import table as _detection_table  # noqa: E402,F401  (registers the detection table)
# table modules register on import (the table rule's wildcard lists TABLES.names())
from qcbench import ablations as _ablations  # noqa: E402,F401  (registers tables 4, 5, 7, 9, 10, 12)
