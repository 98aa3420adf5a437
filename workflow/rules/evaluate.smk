# Evaluate any model file of a cell into its one-row metrics Parquet.
rule evaluate:
    input:
        data=data_file,
        model=f"results/{CELL}/model.safetensors",
    output:
        metrics=f"results/{CELL}/metrics.parquet",
    log:
        f"results/logs/evaluate/{CELL}.log",
    params:
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/qcbench.yaml"
    script:
        "../scripts/evaluate.py"
