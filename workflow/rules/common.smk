# Config validation, wildcard constraints and input functions shared by every rule.
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

try:
    import qcbench  # noqa: F401  (installed by `make setup`)
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "src"))

from qcbench.backends import BACKENDS
from qcbench.attacks import init_source
from qcbench.config import ConfigError, check_config, resolve_methods
from qcbench.defenses import is_fp_defense
from qcbench.figures import FIGURES, figure_inputs, figure_names
from qcbench.package_data import CONFIG_SCHEMA, PAPER_REFERENCE
from qcbench.plan import (
    ablation_cells,
    main_cells,
    no_defense_entries,
    with_attacker_rows,
    with_references,
)
from qcbench.tables import TABLES, table_inputs

# shipped inside the package: the config schema and the paper's reported numbers, joined into
# the tables (qcbench/reference/paper-reference.md)
SCHEMA = CONFIG_SCHEMA
PAPER_CSV = str(PAPER_REFERENCE)
# optional sections set to null by a later --configfile are absent (snakemake's validate fills
# schema defaults into sections and cannot descend into a null one)
for _section in ("detection", "table6", "figures"):
    if _section in config and config[_section] is None:
        del config[_section]
try:
    check_config(config, schema_path=SCHEMA)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
# every attack and defense entry completed with its method's defaults: the rules' params and the
# scripts see the values each job runs with
resolve_methods(config)
validate(config, str(SCHEMA))

RUN = config["run"]
ENVS = Path(workflow.basedir) / "envs"
CELL = "{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}"


def _alt(names):
    return "|".join(re.escape(str(n)) for n in names)


TABLE_NAMES = _alt(TABLES.names())
# attacks proper, without "clean" (the attack rule never makes clean models)
ATTACK_NAMES = _alt(config["attacks"])
# defenses that purify the FP model (quantized afterwards) vs those acting on the quantized one
FP_DEFENSES = [n for n, d in config["defenses"].items() if is_fp_defense(d["method"])]
Q_DEFENSES = [n for n in config["defenses"] if n not in FP_DEFENSES]


wildcard_constraints:
    dataset=_alt(config["data"]["sources"]),
    arch=_alt(config["archs"]),
    attack=_alt(["clean", *config["attacks"]]),
    bits=r"\d+",
    defense=_alt(["none", *config["defenses"]]),
    seed=r"\d+",
    # every registered runtime: one not in eval.backends fails in configured_backend (below) with
    # a message naming the key, instead of Snakemake's bare "No rule to produce"
    backend=_alt(BACKENDS.names()),


def data_file(wc):
    return f"resources/data/{wc.dataset}/data.safetensors"


def configured_backend(wc):
    """No input; refuses a real int8 runtime the config does not list (asked for by path)."""
    listed = config["eval"].get("backends", [])
    if wc.backend not in listed:
        raise ValueError(
            f"config key 'eval.backends': {wc.backend!r} is not listed (listed: {listed}); "
            f"add it there to evaluate 8-bit cells with that runtime"
        )
    return []


def fp_model(wc):
    """The attacked full-precision model of a cell (the clean model for attack 'clean')."""
    return f"results/{wc.dataset}/{wc.arch}/{wc.attack}/w32/none/seed{wc.seed}/model.safetensors"


def attack_inputs(wc):
    """The data, and the model the attack starts from (init): the clean model or another
    attack's FP model of the same seed; none for init: scratch."""
    spec = config["attacks"][wc.attack]
    out = {"data": data_file(wc)}
    source = init_source(spec.get("method", wc.attack), spec)
    if source:
        out["init"] = (
            f"results/{wc.dataset}/{wc.arch}/{source}/w32/none/seed{wc.seed}/model.safetensors"
        )
    return out


def undefended_model(wc):
    return f"results/{wc.dataset}/{wc.arch}/{wc.attack}/w{wc.bits}/none/seed{wc.seed}/model.safetensors"


def cell_metrics():
    """Every metrics file `all` needs: the main grid (qcbench.plan.main_cells), beside each QCB
    no-defense cell quantized in another scheme than its attack's that cell in the attack's own
    scheme (the verdicts' "fires"); the cells of the ablation tables in run.ablations and of
    Table 6 (PDA as a plug-in: workflow/rules/common/detection.smk); each once, and beside each
    cell defended in a named scheme the no-defense cell of that scheme its DER is rated against.
    """
    main = with_attacker_rows(config, main_cells(config, FP_DEFENSES))
    return with_references(
        config, main + ablation_cells(config, FP_DEFENSES) + table6_metrics()
    )


def table_input(wc):
    """The collated metrics, the paper's numbers and any extra collated files the table declared."""
    return {
        "metrics": "results/metrics.parquet",
        "paper": PAPER_CSV,
        **table_inputs(wc.table),
    }


def _canonical(spec):
    """A config entry with its keys sorted at every level: Snakemake's params trigger compares
    the dicts in order, so reordering keys in a YAML file (or a `<<:` merge) must not rerun jobs.
    """
    if isinstance(spec, dict):
        return {k: _canonical(spec[k]) for k in sorted(spec, key=str)}
    if isinstance(spec, list):
        return [_canonical(v) for v in spec]
    return spec


def clean_spec(wc):
    return _canonical(config["clean"][wc.dataset])


def attack_spec(wc):
    """The attack entry as the job's params (a change reruns it), without `cell_bits`: which cells
    the model gets does not change the model."""
    spec = {k: v for k, v in config["attacks"][wc.attack].items() if k != "cell_bits"}
    return _canonical(spec)


def defense_spec(wc):
    return _canonical(config["defenses"][wc.defense])


# -- tables, figures and the report (workflow/rules/report.smk) --
FIGURE_NAMES = _alt(FIGURES.names())
REPORT_NOTEBOOK = str(
    Path(workflow.basedir) / "workflow" / "notebooks" / "report.ipynb"
)
# what the report shows: every registered table, every figure the config names
REPORT_TABLES = TABLES.names()
REPORT_FIGURES = figure_names(config)


def table_frames(wc):
    return table_inputs(wc.table)


def figure_files(wc):
    return figure_inputs(wc.figure, config)
