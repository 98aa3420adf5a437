# qcbench: quantization-conditioned backdoors, attacks and defenses, end to end.
# Local default:  snakemake --cores 2 all
# Paper scale:    snakemake --profile slurm all --configfile config/config.yaml
# Other overlays: snakemake --cores 2 all --configfile config/local.yaml config/baselines.yaml


from snakemake.utils import min_version

min_version("9.0")


# The paper config is complete; every --configfile is layered on it in order. Without one, the
# local default's differences (config/local.yaml) are (qcbench.config.load_config does the same).
configfile: f"{workflow.basedir}/config/config.yaml"


if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/local.yaml"


# `snakemake --report results/report/snakemake.html`: tables, figures and the report, captioned
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/common/detection.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/defend.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/lac_curve.smk"


rule all:
    default_target: True
    input:
        "results/metrics.parquet",
        expand(
            "results/tables/{table}.{ext}",
            table=REPORT_TABLES,
            ext=["md", "tex", "html"],
        ),
        expand(
            "results/figures/{figure}.{ext}",
            figure=REPORT_FIGURES,
            ext=["png", "pdf"],
        ),
        "results/report/index.html",
