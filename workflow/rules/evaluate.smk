# Evaluate any model file of a cell into its one-row metrics Parquet.
rule evaluate:
    input:
        data=data_file,
        model=f"results/{CELL}/model.safetensors",
    output:
        metrics=f"results/{CELL}/metrics.parquet",
    log:
        f"results/logs/evaluate/{CELL}.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL}.tsv"
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        eval=_canonical(config["eval"]),
    script:
        "../scripts/evaluate.py"


# The attacked FP model through a real int8 runtime (PyTorch x86/qnnpack PTQ, ONNX Runtime),
# beside the simulated 8-bit cell: backend = the runtime in metrics.parquet.
rule evaluate_backend:
    input:
        configured_backend,
        data=data_file,
        fp=fp_model,
    output:
        metrics="results/{dataset}/{arch}/{attack}/w8/none/seed{seed}/metrics.{backend}.parquet",
    log:
        "results/logs/evaluate_backend/{dataset}/{arch}/{attack}/{backend}/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_backend/{dataset}/{arch}/{attack}/{backend}/seed{seed}.tsv"
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        eval=_canonical(config["eval"]),
        quant=_canonical(config["quant"]),
    script:
        "../scripts/evaluate_backend.py"
