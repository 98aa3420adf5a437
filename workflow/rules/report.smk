localrules:
    collate,
    table,


rule collate:
    input:
        cell_metrics(),
    output:
        "results/metrics.parquet",
    log:
        "results/logs/collate.log",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    script:
        "../scripts/collate.py"


# One rule renders every table; the table is a wildcard dispatched through qcbench.report.TABLES.
# A table may declare extra collated inputs (qcbench.report.register_table(..., inputs=...)).
rule table:
    input:
        unpack(table_input),
    output:
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    log:
        "results/logs/table/{table}.log",
    wildcard_constraints:
        table=TABLE_NAMES,
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    params:
        config=config,
    script:
        "../scripts/table.py"
