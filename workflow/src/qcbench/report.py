"""Rendering of collated metrics into the paper's table layouts (Markdown and LaTeX)."""

from __future__ import annotations

import pandas as pd

from qcbench._registry import Registry

TABLES = Registry("table")
register_table = TABLES.register

PAPER_NAMES = {"none": "No defense", "lac": "LAC+PDA (ours)", "lac_only": "LAC", "efrap": "EFRAP"}


def _fmt(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _cell(group: pd.DataFrame | None, cols=("ba", "asr", "der")) -> str:
    if group is None or group.empty:
        return "not yet produced"
    return " / ".join(_fmt(group[c]) for c in cols)


def _grid(
    df: pd.DataFrame, rows: list[str], columns: list[tuple], row_key: str, col_keys: tuple, cols
) -> list[list[str]]:
    out = []
    groups = {k: g for k, g in df.groupby([row_key, *col_keys])}
    for r in rows:
        out.append([PAPER_NAMES.get(r, r)] + [_cell(groups.get((r, *c)), cols) for c in columns])
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


@register_table("table1")
def table1(df: pd.DataFrame, defenses: list[str] | None = None) -> tuple[str, str]:
    """Paper Table 1 layout: rows are defenses, column groups bits × attack, cells
    BA / ASR / DER (mean ± std over seeds). One block per (dataset, arch)."""
    df = df[df.backend == "sim"]
    md_parts, tex_parts = [], []
    for (dataset, arch), sub in df.groupby(["dataset", "arch"], sort=True):
        q = sub[(sub.bits != 32) & (sub.attack != "clean")]
        bits = sorted(q.bits.unique(), reverse=True)
        attacks = sorted(q.attack.unique())
        rows = ["none"] + [d for d in (defenses or sorted(q.defense.unique())) if d != "none"]
        columns = [(b, a) for b in bits for a in attacks]
        header = ["Defense"] + [f"{b}-bit {a}" for b, a in columns]
        body = _grid(q, rows, columns, "defense", ("bits", "attack"), ("ba", "asr", "der"))
        seeds = sorted(int(s) for s in sub.seed.unique())
        caption = (
            f"Table 1 ({dataset}, {arch}): BA / ASR / DER in %, mean ± std over seeds {seeds}. "
            "ASR excludes target-class images; DER against the no-defense quantized model."
        )
        fp = sub[sub.bits == 32]
        fp_rows = sorted(fp.attack.unique(), key=lambda a: (a != "clean", a))
        fp_body = [[a] + [_fmt(fp[fp.attack == a][c]) for c in ("ba", "asr", "asr_all")] for a in fp_rows]
        md_parts.append(
            f"**{caption}**\n\n{_markdown(header, body)}\n\n"
            f"Full-precision models ({dataset}, {arch}): BA / ASR / ASR incl. target class\n\n"
            + _markdown(["Model", "BA", "ASR", "ASR (all)"], fp_body)
        )
        tex_parts.append(_latex(header, body, caption))
    if not md_parts:
        return "No metrics yet.\n", "% no metrics yet\n"
    return "\n\n".join(md_parts) + "\n", "\n".join(tex_parts)


@register_table("table8")
def table8(df: pd.DataFrame, **_) -> tuple[str, str]:
    """Paper Table 8: full-precision BA / ASR per attack and the clean model; and each attack's
    8-bit ASR under the simulated quantizer beside the real int8 runtimes (no defense)."""
    md_parts, tex_parts = [], []
    for (dataset, arch), sub in df.groupby(["dataset", "arch"], sort=True):
        fp = sub[(sub.bits == 32) & (sub.backend == "sim")]
        attacks = sorted(fp.attack.unique(), key=lambda a: (a != "clean", a))
        body = [[a] + [_fmt(fp[fp.attack == a][c]) for c in ("ba", "asr", "asr_all")] for a in attacks]
        header = ["Model (FP32)", "BA", "ASR", "ASR (all)"]
        cap = f"Table 8 ({dataset}, {arch}): full-precision models, BA / ASR in % (mean ± std over seeds)."
        q8 = sub[(sub.bits == 8) & (sub.defense == "none")]
        backends = ["sim"] + sorted(b for b in q8.backend.unique() if b != "sim")
        rows = sorted(q8.attack.unique())
        real = [[a] + [_cell(q8[(q8.attack == a) & (q8.backend == b)], ("ba", "asr")) for b in backends] for a in rows]
        rheader = ["Attack (8-bit, no defense)"] + [("simulated" if b == "sim" else b) + " BA / ASR" for b in backends]
        rcap = (
            f"Simulated 8-bit quantizer (the attack's own scheme) vs real int8 runtimes (PTQ of the FP model, "
            f"calibrated on the defender subset), {dataset}, {arch}."
        )
        md_parts.append(f"**{cap}**\n\n{_markdown(header, body)}\n\n**{rcap}**\n\n{_markdown(rheader, real)}")
        tex_parts.append(_latex(header, body, cap) + _latex(rheader, real, rcap))
    if not md_parts:
        return "No metrics yet.\n", "% no metrics yet\n"
    return "\n\n".join(md_parts) + "\n", "\n".join(tex_parts)
