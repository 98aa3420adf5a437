"""The tables' common ground: registry, context, blocks, cell formatting, the paper join, the
display labels and the Markdown / LaTeX / HTML renderers. Imports no table family.

The contract every table follows (so Markdown, LaTeX and HTML come from one structure):

- a table is a function registered with ``@register_table(name, inputs=(...))``; it takes a
  :class:`TableContext` and returns a list of :class:`Block` (one per dataset/arch, sub-table …);
- ``inputs`` names extra collated files the table needs besides ``results/metrics.parquet``
  (for example ``{"detection": "results/detection.parquet"}``); the ``table`` rule adds them to its
  inputs and :func:`render` loads them into ``ctx.frames``;
- cells are strings; :func:`fmt` / :func:`cell` format mean ± std over seeds and
  :meth:`PaperReference.value` looks a reported number up in qcbench/reference/paper-reference.csv, keyed
  like the paper (table, dataset, arch, attack, bits, defense, variant, metric);
- a defense's row label is :func:`defense_label`: the ``label`` of its registered class;
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
from qcbench.plan import attack_spec

TABLES = Registry("table")
NOT_PRODUCED = "not yet produced"
#: the row label of the undefended model ("none" is no config entry)
NO_DEFENSE = "No defense"
#: how a label names the attack's own quantizer (a defense entry's ``scheme: attacker``)
ATTACKER_QUANTIZER = "the attacker's quantizer"
#: the mark of the paper's own method in a label (e.g. "LAC+PDA (ours)"); HTML highlights its rows
OURS = " (ours)"


@dataclass
class Block:
    """One rendered table: a caption (starts with the table's name, e.g. "Table 4 (…)"), a header
    row, body rows of formatted cell strings, and an optional note printed under it."""

    caption: str
    header: list[str]
    body: list[list[str]]
    note: str = ""


class PaperReference:
    """The paper's reported numbers (qcbench/reference/paper-reference.csv, long format, one row per number)."""

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


def pick(df: pd.DataFrame, **keys) -> pd.DataFrame:
    """The rows of ``df`` whose columns equal every given value (``pick(df, attack="pq", bits=8)``)."""
    for k, v in keys.items():
        df = df[df[k] == v]
    return df


# -- labels and the paper join ----------------------------------------------------------------
def defense_label(config: Mapping, name: str, ours: bool = True) -> str:
    """The display name of defense entry ``name``: "No defense" for ``none``; else the ``label``
    of the registered class behind its ``method`` (``defenses.<name>.method``, default the name
    itself), or the class's ``label_without_pda`` when the entry turns ``pda`` off; ", in
    <scheme>" follows when the entry names a ``scheme`` (", in the attacker's quantizer" for
    ``attacker``). A name whose method is not registered stands for itself. ``ours=False`` drops
    the " (ours)" mark."""
    if name == "none":
        return NO_DEFENSE
    from qcbench.defenses import DEFENSES

    spec = (config.get("defenses") or {}).get(name) or {}
    method = spec.get("method", name)
    cls = DEFENSES.get(method) if method in DEFENSES else None
    label = getattr(cls, "label", name)
    if not spec.get("pda", True):
        label = getattr(cls, "label_without_pda", label)
    if not ours:
        label = label.replace(OURS, "")
    scheme = spec.get("scheme")
    if not scheme:
        return label
    from qcbench.cells import ATTACKER

    return f"{label}, in {ATTACKER_QUANTIZER if scheme == ATTACKER else scheme}"


# our defense names -> the paper's (qcbench/reference/paper-reference.md); FP rows of "none" are "none_fp"
PAPER_DEFENSES = {"lac": "lac_pda", "lac_only": "lac"}


def paper_defense(defense: str, bits: int) -> str:
    if defense == "none" and int(bits) == 32:
        return "none_fp"
    return PAPER_DEFENSES.get(defense, defense)


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


def setting_note(ds: str, arch: str, ref: tuple[str, str]) -> str:
    """A caption's closing sentence naming the paper's setting ``ref`` when it is not ours."""
    if ref == (ds, arch):
        return ""
    shown = ", ".join(r for r in ref if r)
    return f" Paper values (in parentheses): {shown}."


# -- renderers --------------------------------------------------------------------------------
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
    ours = ["qc-ours" if row and OURS.strip() in str(row[0]) else "" for row in block.body]
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
