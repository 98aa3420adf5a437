rule prepare_data:
    output:
        data="resources/data/{dataset}/data.safetensors",
        meta="resources/data/{dataset}/data.json",
    log:
        "results/logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/prepare_data.py"
