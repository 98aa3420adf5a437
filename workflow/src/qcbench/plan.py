"""Which cells each of the paper's tables needs, from the config alone (no pandas, no rendering).

The config's ``ablations:`` section names, per paper table, the cells it needs (``attacks``,
``bits``, ``defenses`` besides "none", ``seeds``; ``datasets``/``archs`` default to ``run``'s);
``run.ablations`` lists the tables whose cells ``all`` builds. :func:`ablation_cells` turns them
into metrics paths (every attack's FP model and no-defense cells included), which the workflow
adds to the main run's cells; the generic attack/quantize/defend/evaluate rules build them. The
tables themselves are rendered by :mod:`qcbench.tables`. :func:`main_cells` plans the main grid
(``run:``), each defense on the cells ``run.defense_cells`` allows it.

Every cell is quantized as :func:`qcbench.cells.scheme_name` says: in ``quant.deployer_scheme``
when set, else in the attack's own scheme, unless its defense entry names a ``scheme``
(``attacker``: the attack's own). A defense entry without ``scheme`` is rated (DER) against the
``none`` row; one that names a ``scheme`` against the no-defense cell of that scheme, a
``requantize`` entry (:func:`der_reference`); :func:`with_references` plans that cell beside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: the tables whose cells come from an ``ablations:`` entry alone (rendered by qcbench.tables)
ABLATION_TABLES = ("table4", "table5", "table7", "table9", "table10", "table12", "triggers", "schemes")
#: tables rendered from the collated metrics whose cells outside the main run (other datasets or
#: architectures) an ``ablations:`` entry may still name: Table 2 (Tiny-ImageNet), Table 3
#: (architectures), Table 11 (ImageNette)
CELL_TABLES = ("table2", "table3", "table11")
SPEC_KEYS = ("datasets", "archs", "attacks", "bits", "defenses", "seeds")
# image side per dataset, only to print a patch trigger's size in pixels
IMAGE_SIZES = {"fashion_mnist": 28, "cifar10": 32, "gtsrb": 32, "tinyimagenet": 64, "imagenette": 224}


def attack_spec(config: Mapping, attack: str) -> dict:
    """The config entry ``attacks.<attack>`` (empty when absent)."""
    return (config.get("attacks") or {}).get(attack) or {}


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


#: tables that read the clean model's row whatever their attacks start from (the triggers table's
#: "FP BA − clean" column)
COMPARED_WITH_CLEAN = frozenset({"triggers"})


def ablation_cells(cfg: Mapping, fp_defenses=(), tables=None) -> list[str]:
    """Metrics files of every enabled ablation table's cells, in order, without duplicates: each
    attack's FP model, its no-defense quantized cells and its defended cells (an FP-level
    defense in ``fp_defenses`` also gets its purified FP model's row), and the clean model's row
    of each (setting, seed) whose attacks start from it (trained anyway; the verdicts table and
    Table 8 compare with it) or whose table compares with it (:data:`COMPARED_WITH_CLEAN`). An
    entry's ``backends`` (those also in ``eval.backends``) add its 8-bit no-defense cells'
    real-runtime rows (``metrics.<backend>.parquet``). An attack that declares the bit widths it
    trains against gets cells only at those (as in the main grid). ``tables``: only those tables'."""
    from qcbench.attacks import cell_bits

    out: list[str] = []
    for table, spec in ablation_specs(cfg).items():
        if tables is not None and table not in tables:
            continue
        for ds, arch in spec["settings"]:
            for seed in spec["seeds"]:
                if table in COMPARED_WITH_CLEAN or any(_starts_from_clean(cfg, a) for a in spec["attacks"]):
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


def table6_cells(cfg: Mapping) -> list[str]:
    """The metrics files of Table 6 (config key ``table6``, PDA as a plug-in): each attack's FP
    model, undefended and purified by each defense."""
    t6 = cfg.get("table6") or {}
    return [
        f"results/{ds}/{arch}/{atk}/w32/{d}/seed{seed}/metrics.parquet"
        for ds in t6.get("datasets", [])
        for arch in t6.get("archs", [])
        for atk in t6.get("attacks", [])
        for seed in t6.get("seeds", [])
        for d in ["none", *t6.get("defenses", [])]
    ]


def fp_defense_entries(cfg: Mapping) -> list[str]:
    """The defense entries that purify the FP model (quantized per bit width afterwards)."""
    from qcbench.defenses import is_fp_defense

    return [n for n, d in (cfg.get("defenses") or {}).items() if is_fp_defense((d or {}).get("method", n))]


def sections(cfg: Mapping) -> dict[str, list[str]]:
    """The targets of each part of ``all`` on its own, for planning and costing one part: the main
    grid (``table1``, which the verdicts, Table 8 and the deployment table also read), each
    ablation table of ``run.ablations``, Table 6, the detection benchmark and each figure. A
    part's dry run lists every job it needs, the ones it shares with other parts included."""
    fp = fp_defense_entries(cfg)
    out = {"table1": with_references(cfg, with_attacker_rows(cfg, main_cells(cfg, fp)))}
    for table in ablation_specs(cfg):
        out[table] = with_references(cfg, ablation_cells(cfg, fp, tables=[table]))
    if table6_cells(cfg):
        out["table6"] = table6_cells(cfg)
    if (cfg.get("detection") or {}).get("datasets"):
        out["detection"] = ["results/detection.parquet"]
    for fig, entry in (cfg.get("figures") or {}).items():  # null: not drawn
        if entry is not None:
            out[fig] = [f"results/figures/{fig}.png"]
    return out


def no_defense_entries(cfg: Mapping) -> list[str]:
    """The defense entries that defend nothing (``requantize``), in config order: each one's row is
    the no-defense cell of its scheme (:func:`der_reference`)."""
    from qcbench.defenses import is_no_defense

    return [n for n, d in (cfg.get("defenses") or {}).items() if is_no_defense((d or {}).get("method", n))]


def der_reference(cfg: Mapping, defense: str) -> str | None:
    """The defense whose row of the same quantized cell is ``defense``'s no-defense reference for
    DER: "none" (the cell's own quantizer: the deployer's when ``quant.deployer_scheme`` is set,
    else the attack's) unless the entry names a ``scheme`` S (``attacker`` included), then the
    first no-defense entry in S (the cell's FP model quantized with S, no defense), or None when
    the config has none (its DER is then NaN; :func:`qcbench.config.check_config` refuses a run
    that uses such an entry). A 32-bit row's reference is always the FP model ("none")."""
    scheme = ((cfg.get("defenses") or {}).get(defense) or {}).get("scheme")
    if defense == "none" or scheme is None:
        return "none"
    return next((n for n in no_defense_entries(cfg) if cfg["defenses"][n].get("scheme") == scheme), None)


_METRICS = re.compile(
    r"results/(?P<cell>[^/]+/[^/]+/[^/]+)/w(?P<bits>\d+)/(?P<defense>[^/]+)/(?P<seed>seed\d+)/metrics\.parquet"
)


def with_references(cfg: Mapping, paths: list[str]) -> list[str]:
    """``paths`` (metrics files), each quantized defended cell followed by its DER reference cell
    (:func:`der_reference`) when that is not "none" (planned with every cell anyway), without
    duplicates."""
    out: list[str] = []
    for path in paths:
        out.append(path)
        m = _METRICS.fullmatch(path)
        if m and m["bits"] != "32" and (ref := der_reference(cfg, m["defense"])) not in (None, "none"):
            out.append(f"results/{m['cell']}/w{m['bits']}/{ref}/{m['seed']}/metrics.parquet")
    return list(dict.fromkeys(out))


def defense_cells(cfg: Mapping, defense: str) -> dict:
    """The restriction ``run.defense_cells.<defense>`` (``attacks``, ``bits``, ``seeds``, each a
    subset of ``run``'s; a key absent: all of them), ``{}`` when there is none."""
    return dict(((cfg.get("run") or {}).get("defense_cells") or {}).get(defense) or {})


def runs_on(cfg: Mapping, defense: str, attack: str, bits: int | None = None, seed: int | None = None) -> bool:
    """Whether the main grid has ``defense``'s cell of (``attack``, ``bits``, ``seed``) under
    ``run.defense_cells`` (a None coordinate is not checked); "none" runs everywhere."""
    only = defense_cells(cfg, defense)
    return all(
        value is None or key not in only or value in only[key]
        for key, value in (("attacks", attack), ("bits", bits), ("seeds", seed))
    )


def main_cells(cfg: Mapping, fp_defenses=()) -> list[str]:
    """Metrics files of the main grid (``run:``), in order: per (dataset, arch, seed) the clean
    model, then per attack its FP model, the purified FP models of the FP-level defenses in
    ``fp_defenses`` (where the defense has a quantized cell of that attack and seed), each bit
    width the attack has a cell at without and with each defense (``run.defense_cells`` limits
    a defense to some attacks, bit widths or seeds) and its 8-bit cells' real-runtime rows
    (``eval.backends``)."""
    from qcbench.attacks import cell_bits

    run, out = cfg["run"], []
    backends = (cfg.get("eval") or {}).get("backends") or []
    for ds in run["datasets"]:
        for arch in run["archs"]:
            for seed in run["seeds"]:
                base = f"results/{ds}/{arch}"
                out.append(f"{base}/clean/w32/none/seed{seed}/metrics.parquet")
                for atk in run["attacks"]:
                    bits_of = cell_bits(attack_spec(cfg, atk), run["bits"])
                    out.append(f"{base}/{atk}/w32/none/seed{seed}/metrics.parquet")
                    for d in run["defenses"]:
                        if d in fp_defenses and any(runs_on(cfg, d, atk, b, seed) for b in bits_of):
                            out.append(f"{base}/{atk}/w32/{d}/seed{seed}/metrics.parquet")
                    for bits in bits_of:
                        for d in ["none", *run["defenses"]]:
                            if runs_on(cfg, d, atk, bits, seed):
                                out.append(f"{base}/{atk}/w{bits}/{d}/seed{seed}/metrics.parquet")
                    if 8 in bits_of:
                        out += [f"{base}/{atk}/w8/none/seed{seed}/metrics.{b}.parquet" for b in backends]
    return out


def attacker_no_defense(cfg: Mapping) -> str | None:
    """The first ``requantize`` entry in the attacker's scheme (``scheme: attacker``): the row that
    shows a cell in the quantizer its attack is built against, without defense; None if none."""
    from qcbench.cells import ATTACKER

    return next((n for n in no_defense_entries(cfg) if cfg["defenses"][n].get("scheme") == ATTACKER), None)


def is_qcb(method: str) -> bool:
    """Whether a registered attack method plants a quantization-conditioned backdoor: it is built
    against a quantization scheme (plain backdoors such as BadNets set ``scheme = None``) and is
    not a clean training recipe (``clean_qat`` sets ``plants_backdoor = False``)."""
    from qcbench.attacks import ATTACKS

    if method not in ATTACKS:
        return False
    cls = ATTACKS.get(method)
    return getattr(cls, "scheme", None) is not None and getattr(cls, "plants_backdoor", True)


def with_attacker_rows(cfg: Mapping, paths: list[str]) -> list[str]:
    """``paths``, each quantized no-defense cell ("none") of a QCB attack (:func:`is_qcb`) whose
    quantizer is not the attack's own (``quant.deployer_scheme`` set to another scheme) followed
    by the same cell in the attack's own scheme (:func:`attacker_no_defense`), so the verdicts
    can say whether the backdoor fires where it was built to; ``paths`` unchanged when the
    config has no such entry."""
    from qcbench.cells import ATTACKER, scheme_name

    entry = attacker_no_defense(cfg)
    if entry is None:
        return paths
    out: list[str] = []
    for path in paths:
        out.append(path)
        m = _METRICS.fullmatch(path)
        if not m or m["bits"] == "32" or m["defense"] != "none":
            continue
        attack = m["cell"].rsplit("/", 1)[1]
        spec = attack_spec(cfg, attack)
        if is_qcb(spec.get("method", attack)) and scheme_name(cfg, spec) != scheme_name(cfg, spec, ATTACKER):
            out.append(f"results/{m['cell']}/w{m['bits']}/{entry}/{m['seed']}/metrics.parquet")
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
    out += _defense_cells_errors(cfg)
    fig2 = (cfg.get("figures") or {}).get("fig2")
    if fig2:
        if (cfg["defenses"].get("lac") or {}).get("method") != "lac":
            out.append("config key 'figures.fig2': needs a defense 'lac' of method 'lac' (LAC+PDA) under 'defenses'")
    return out


def _defense_cells_errors(cfg: Mapping) -> list[str]:
    """``run.defense_cells``: each entry names a defense entry, its attacks attack entries, and a
    defense of ``run.defenses`` keeps at least one of ``run``'s attacks, bit widths and seeds."""
    run, out = cfg.get("run") or {}, []
    for d, only in (run.get("defense_cells") or {}).items():
        key = f"run.defense_cells.{d}"
        if d not in (cfg.get("defenses") or {}):
            out.append(f"config key '{key}': {d!r} has no entry under 'defenses'")
            continue
        only = only or {}
        out += [
            f"config key '{key}.attacks.{i}': attack {a!r} has no entry under 'attacks'"
            for i, a in enumerate(only.get("attacks") or [])
            if a not in (cfg.get("attacks") or {})
        ]
        if d not in (run.get("defenses") or []):
            continue  # not run: nothing to restrict (an overlay may drop it from run.defenses)
        for field, values in only.items():
            if values and not set(values) & set(run.get(field) or []):
                out.append(f"config key '{key}.{field}': {values} leaves {d!r} no cell of run.{field} {run.get(field)}")
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
