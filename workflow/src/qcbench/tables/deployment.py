"""The ``deployment`` table: every 8-bit attack of the main run (no defense) in every real int8
runtime of ``eval.backends``, beside the simulated quantizer of the attack's own scheme."""

from __future__ import annotations

from qcbench.attacks import cell_bits
from qcbench.plan import attack_spec
from qcbench.tables._base import NOT_PRODUCED, Block, TableContext, cell, pick, register_table

#: an ASR (%, mean over seeds) at or above this counts as the backdoor firing in a runtime
FIRES_ASR = 50.0


def runtime_description(name: str) -> str:
    """``name (runtime version; BN folded or not; weights per-channel/per-tensor, activations)``
    from the backend's declared settings (:func:`qcbench.backends.backend_settings`)."""
    from qcbench.backends import backend_settings

    s = backend_settings(name)
    fold = "BN folded" if s["fuse_conv_bn"] else "BN kept apart"
    engine = f", {s['engine']}" if s["engine"] and s["engine"] not in name else ""
    return f"{name} ({s['runtime']}{engine}; {fold}; {s['weights']} int8 weights, {s['activations']} activations)"


@register_table("deployment")
def deployment(ctx: TableContext) -> list[Block]:
    """Rows: the simulated 8-bit quantizer (the attack's own scheme), then each runtime of
    ``eval.backends``; columns: the main run's 8-bit attacks; cells BA / ASR (no defense, PTQ of
    the FP model calibrated on the defender subset), mean ± std over the run's seeds. The caption
    gives each runtime's version and settings; the note names the runtimes in which each attack's
    backdoor fires (mean ASR ≥ 50 %)."""
    run = ctx.config.get("run") or {}
    runtimes = list((ctx.config.get("eval") or {}).get("backends") or [])
    attacks = [
        a for a in run.get("attacks") or [] if 8 in cell_bits(attack_spec(ctx.config, a), run.get("bits") or [8])
    ]
    seeds = list(run.get("seeds") or [])
    df = ctx.metrics
    if "backend" not in df.columns:
        df = df.assign(backend="sim")
    df = df[(df.bits == 8) & (df.defense == "none")]
    if seeds:
        df = df[df.seed.isin(seeds)]
    blocks = []
    for ds in run.get("datasets") or []:
        for arch in run.get("archs") or []:
            sub = pick(df, dataset=ds, arch=arch)
            rows = [("simulated (attack's scheme)", "sim"), *((r, r) for r in runtimes)]
            body, fires = [], {a: [] for a in attacks}
            for label, backend in rows:
                line = [label]
                for a in attacks:
                    g = pick(sub, attack=a, backend=backend)
                    line.append(cell(g, ("ba", "asr")) if not g.empty else NOT_PRODUCED)
                    if backend != "sim" and not g.empty and float(g.asr.mean()) >= FIRES_ASR:
                        fires[a].append(backend)
                body.append(line)
            header = ["Quantizer (8-bit, no defense)"] + [f"{a} BA / ASR" for a in attacks]
            cap = (
                f"Deployment matrix ({ds}, {arch}): each 8-bit attack without defense in each real int8 "
                f"runtime (PTQ of the FP model, calibrated on the defender subset), BA / ASR in %, mean ± std "
                f"over seeds {', '.join(map(str, seeds))}. Runtimes: "
                + "; ".join(runtime_description(r) for r in runtimes)
                + "."
            )
            note = " ".join(
                f"{a} fires (ASR ≥ {FIRES_ASR:g} %) in: {', '.join(f) or 'no runtime'}." for a, f in fires.items()
            )
            blocks.append(Block(cap, header, body, note if runtimes else ""))
    if not blocks:
        blocks.append(Block("Deployment matrix: no run configured (config key 'run').", ["–"], [[NOT_PRODUCED]]))
    return blocks
