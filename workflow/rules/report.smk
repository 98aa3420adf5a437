# Collation, tables, figures and the rendered report (qcbench.tables, qcbench.figures).
localrules:
    collate,
    table,
    report,


rule collate:
    input:
        cell_metrics(),
    output:
        "results/metrics.parquet",
    log:
        "results/logs/collate.log",
    benchmark:
        "results/benchmarks/collate/collate.tsv"
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    params:
        # the no-defense entries (requantize): the DER reference of the defenses in their scheme
        no_defense=no_defense_entries(config),
    script:
        "../scripts/collate.py"


# One rule renders every table; the table is a wildcard dispatched through qcbench.tables.TABLES.
# A table may declare extra collated inputs (qcbench.tables.register_table(..., inputs=...)).
rule table:
    input:
        unpack(table_frames),
        metrics="results/metrics.parquet",
        paper=PAPER_CSV,
    output:
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
        html=report(
            "results/tables/{table}.html",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}"},
        ),
    log:
        "results/logs/table/{table}.log",
    benchmark:
        "results/benchmarks/table/{table}.tsv"
    wildcard_constraints:
        table=TABLE_NAMES,
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    params:
        config=_canonical(config),
    script:
        "../scripts/table.py"


# One rule draws every figure; the figure is a wildcard dispatched through qcbench.figures.FIGURES,
# which also declares each figure's inputs (the models, data or collated files of the cell that
# config key figures.<name> names).
rule figure:
    input:
        unpack(figure_files),
    output:
        png=report(
            "results/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
        pdf="results/figures/{figure}.pdf",
        json="results/figures/{figure}.json",
    log:
        "results/logs/figure/{figure}.log",
    benchmark:
        "results/benchmarks/figure/{figure}.tsv"
    wildcard_constraints:
        figure=FIGURE_NAMES,
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    params:
        config=_canonical(config),
    script:
        "../scripts/figure.py"


# The report notebook (papermill, parameterized by the results folder) rendered to one
# standalone HTML file: every table and figure, images embedded, no code shown.
rule report:
    input:
        notebook=REPORT_NOTEBOOK,
        metrics="results/metrics.parquet",
        tables=expand("results/tables/{table}.html", table=REPORT_TABLES),
        figures=expand(
            "results/figures/{figure}.{ext}",
            figure=REPORT_FIGURES,
            ext=["png", "json"],
        ),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/report.rst",
            category="Report",
        ),
        notebook="results/report/report.ipynb",
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    script:
        "../scripts/report.py"
