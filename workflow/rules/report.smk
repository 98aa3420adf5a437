localrules:
    collate,
    table1,


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


rule table1:
    input:
        "results/metrics.parquet",
    output:
        md="results/tables/table1.md",
        tex="results/tables/table1.tex",
    log:
        "results/logs/table1.log",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    params:
        defenses=RUN["defenses"],
    script:
        "../scripts/table1.py"
