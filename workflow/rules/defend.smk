# One generic defense rule: the defense is a wildcard dispatched through qcbench's registry.
rule defend:
    input:
        data=data_file,
        fp=fp_model,
        quantized=undefended_model,
    output:
        model="results/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}/model.safetensors",
        meta="results/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}/model.json",
    log:
        "results/logs/defend/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}.log",
    benchmark:
        "results/benchmarks/defend/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}.tsv"
    wildcard_constraints:
        bits=r"(?!32$)\d+",
        defense=DEFENSE_NAMES,
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        spec=defense_spec,
        version=qcbench.__version__,
    script:
        "../scripts/defend.py"
