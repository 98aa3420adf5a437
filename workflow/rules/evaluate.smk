# Evaluate any model file of a cell into its one-row metrics Parquet.
rule evaluate:
    input:
        data=data_file,
        model=f"results/{CELL}/model.safetensors",
    output:
        metrics=f"results/{CELL}/metrics.parquet",
    log:
        f"results/logs/evaluate/{CELL}.log",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        eval=config["eval"],
    script:
        "../scripts/evaluate.py"
