"""The ``verdicts`` table: does each quantization-conditioned backdoor behave as one, per seed?

For every cell of a QCB attack (an attack whose registered method is built against a quantizer,
see :func:`is_qcb`) at every bit width it was quantized to, and every seed, the table checks
against thresholds (config ``verdicts``, defaults :data:`DEFAULTS`: the bars a QCB
and a defense against it must meet):

- **BA kept**: the attacked FP model's BA is at most ``ba_gap`` points under the clean model of
  the same seed;
- **dormant**: the FP model's ASR is at most ``dormant_asr``;
- **fires**: the simulated quantized model in the attack's own scheme (the quantizer it is built
  against), no defense, reaches ``fires_asr``: the ``none`` row when the cells are in that
  scheme, else the row of a ``requantize`` entry with ``scheme: attacker``
  (:func:`qcbench.plan.with_attacker_rows` plans it);
- **fires in a runtime** (8-bit cells with real-backend rows): the highest ASR over the real int8
  runtimes, with the runtime's name;
- **purified**, one column per defense of ``run.defenses``: ASR at most ``purified_asr`` and BA
  at least the FP model's BA minus ``purified_ba_drop``.

A cell reads ``✓ 8.95`` or ``✗ 10.19`` (the measured figure), ``–`` where the row it needs is
not produced. The note under each block counts the passes per check, so a run says at a glance
which of the phenomena it reproduced; the thresholds are stated in the caption. Nothing here
tunes anything: it reads ``results/metrics.parquet``.
"""

from __future__ import annotations

import pandas as pd

from qcbench.plan import is_qcb
from qcbench.tables._base import Block, TableContext, attack_method, pick, register_table

#: the bars (FP ASR ≤ 10 %, quantized ASR ≥ 90 %, FP BA within 3 points of the clean
#: model; after a defense ASR ≤ 2 % and BA ≥ FP BA − 1 point)
DEFAULTS = {"ba_gap": 3.0, "dormant_asr": 10.0, "fires_asr": 90.0, "purified_asr": 2.0, "purified_ba_drop": 1.0}
NA = "–"


def thresholds(config) -> dict[str, float]:
    """Config ``verdicts`` over :data:`DEFAULTS` (unknown keys are the schema's business)."""
    given = (config or {}).get("verdicts") or {}
    return {k: float(given.get(k, v)) for k, v in DEFAULTS.items()}


def _mark(ok: bool, text: str) -> str:
    return f"{'✓' if ok else '✗'} {text}"


def _one(df: pd.DataFrame, **keys) -> pd.Series | None:
    df = pick(df, **keys)
    return None if df.empty else df.iloc[0]


def _own_scheme_row(sim: pd.DataFrame, attack: str, bits: int, seed: int, own, no_defense) -> pd.Series | None:
    """The no-defense row of a cell in the attack's own scheme ``own``: among the no-defense
    entries ``no_defense`` ("none" first) the first whose row is in ``own``; without ``own`` (or
    a ``scheme`` column) the "none" row."""
    rows = pick(sim, attack=attack, bits=bits, seed=seed)
    if own is None or "scheme" not in rows.columns:
        return _one(rows, defense="none")
    for d in ["none", *no_defense]:
        r = _one(rows[rows.scheme == own], defense=d)
        if r is not None:
            return r
    return None


def cell_verdicts(
    m: pd.DataFrame, attack: str, bits: int, seed: int, defenses: list[str], t: dict, own=None, no_defense=()
) -> dict:
    """The checks of one (attack, bits, seed) cell of one (dataset, arch) frame ``m``: a dict
    check name -> (passed: bool | None, shown text). ``None`` = the rows it needs are missing.
    ``own``: the attack's own scheme, whose no-defense row (``none`` or one of the ``requantize``
    entries ``no_defense``) the "fires" check reads; None: the ``none`` row."""
    sim = m[m.backend == "sim"]
    fp = _one(sim, attack=attack, bits=32, defense="none", seed=seed)
    clean = _one(sim, attack="clean", bits=32, defense="none", seed=seed)
    q = _own_scheme_row(sim, attack, bits, seed, own, no_defense)
    out: dict[str, tuple[bool | None, str]] = {}
    if fp is not None and clean is not None:
        gap = float(fp.ba - clean.ba)
        out["ba_kept"] = (gap >= -t["ba_gap"], f"{gap:+.2f}")
    else:
        out["ba_kept"] = (None, NA)
    out["dormant"] = (None, NA) if fp is None else (float(fp.asr) <= t["dormant_asr"], f"{fp.asr:.2f}")
    out["fires"] = (None, NA) if q is None else (float(q.asr) >= t["fires_asr"], f"{q.asr:.2f}")
    real = m[(m.backend != "sim") & (m.attack == attack) & (m.bits == bits) & (m.defense == "none") & (m.seed == seed)]
    if real.empty:
        out["runtime"] = (None, NA)
    else:
        best = real.loc[real.asr.idxmax()]
        out["runtime"] = (float(best.asr) >= t["fires_asr"], f"{best.asr:.2f} ({best.backend})")
    for d in defenses:
        r = _one(sim, attack=attack, bits=bits, defense=d, seed=seed)
        if r is None or fp is None:
            out[f"purified:{d}"] = (None, NA)
            continue
        ok = float(r.asr) <= t["purified_asr"] and float(r.ba) >= float(fp.ba) - t["purified_ba_drop"]
        out[f"purified:{d}"] = (ok, f"{r.asr:.2f} / {r.ba - fp.ba:+.2f}")
    return out


@register_table("verdicts")
def verdicts(ctx: TableContext) -> list[Block]:
    """One block per (dataset, arch): a row per QCB attack × bit width × seed, a column per check
    (module docstring); the note counts passes per check."""
    from qcbench.cells import ATTACKER, scheme_name
    from qcbench.plan import attack_spec, no_defense_entries

    t = thresholds(ctx.config)
    no_defense = no_defense_entries(ctx.config)
    run = ctx.config.get("run") or {}
    defenses = [d for d in (run.get("defenses") or []) if d != "none"]
    m = ctx.metrics
    blocks = []
    for (dataset, arch), sub in m.groupby(["dataset", "arch"], sort=True):
        attacks = sorted(a for a in sub.attack.unique() if a != "clean" and is_qcb(attack_method(ctx, a)))
        q = sub[(sub.backend == "sim") & (sub.defense == "none") & (sub.bits != 32) & sub.attack.isin(attacks)]
        body, tally = [], {}
        for (attack, bits, seed), _ in q.groupby(["attack", "bits", "seed"], sort=True):
            own = scheme_name(ctx.config, attack_spec(ctx.config, attack), ATTACKER)
            v = cell_verdicts(sub, attack, int(bits), int(seed), defenses, t, own, no_defense)
            body.append(
                [attack, str(int(bits)), str(int(seed))] + [NA if ok is None else _mark(ok, s) for ok, s in v.values()]
            )
            for name, (ok, _s) in v.items():
                if ok is not None:
                    passed, seen = tally.get(name, (0, 0))
                    tally[name] = (passed + int(ok), seen + 1)
        names = ["FP BA − clean", "FP ASR (dormant)", "quantized ASR (fires)", "best real runtime ASR"]
        names += [f"{d}: ASR / BA − FP" for d in defenses]
        keys = ["ba_kept", "dormant", "fires", "runtime"] + [f"purified:{d}" for d in defenses]
        caption = (
            f"Verdicts ({dataset}, {arch}): does each quantization-conditioned backdoor behave as one? Per seed, "
            f"✓ / ✗ against: FP BA ≥ clean BA − {t['ba_gap']:g}; FP ASR ≤ {t['dormant_asr']:g}; quantized ASR "
            f"(simulated in the attack's own scheme, no defense) ≥ {t['fires_asr']:g}; "
            f"the best real int8 runtime's ASR ≥ {t['fires_asr']:g}; "
            f"after each defense ASR ≤ {t['purified_asr']:g} and BA ≥ FP BA − {t['purified_ba_drop']:g}. In %, "
            "points for differences. Thresholds: config key verdicts."
        )
        note = "; ".join(
            f"{label}: {tally[k][0]} of {tally[k][1]}" for label, k in zip(names, keys, strict=True) if k in tally
        )
        blocks.append(Block(caption, ["Attack", "Bits", "Seed", *names], body, f"Passed: {note}." if note else ""))
    if not blocks:
        blocks.append(Block("Verdicts: no quantization-conditioned attack in the metrics yet.", ["–"], [[NA]]))
    return blocks
