# Quantization-aware defenses (LAC, EFRAP): FP model + the cell's quantized model -> a defended
# quantized model. The defense is a wildcard dispatched through qcbench's registry.
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
        defense=_alt(Q_DEFENSES) or "(?!)",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        spec=defense_spec,
        version=qcbench.__version__,
    script:
        "../scripts/defend.py"


# FP-level defenses (FT, fine-pruning, MCR, NAD, I-BAU, FT-SAM) purify the attacked FP model once;
# the quantize rule then quantizes the purified model at every bit width.
rule defend_fp:
    input:
        data=data_file,
        fp=fp_model,
    output:
        model="results/{dataset}/{arch}/{attack}/w32/{defense}/seed{seed}/model.safetensors",
        meta="results/{dataset}/{arch}/{attack}/w32/{defense}/seed{seed}/model.json",
    log:
        "results/logs/defend_fp/{dataset}/{arch}/{attack}/{defense}/seed{seed}.log",
    benchmark:
        "results/benchmarks/defend_fp/{dataset}/{arch}/{attack}/{defense}/seed{seed}.tsv"
    wildcard_constraints:
        defense=_alt(FP_DEFENSES) or "(?!)",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        spec=defense_spec,
        version=qcbench.__version__,
    script:
        "../scripts/defend_fp.py"
