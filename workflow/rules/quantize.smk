# Quantize an FP model (the attacked one, or one purified by an FP-level defense) at {bits} with
# the cell's scheme (qcbench.cells.scheme_name: the deployer's, else the attack's), calibrated on
# the defender subset.
rule quantize:
    input:
        data=data_file,
        fp="results/{dataset}/{arch}/{attack}/w32/{defense}/seed{seed}/model.safetensors",
    output:
        model="results/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}/model.safetensors",
        meta="results/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}/model.json",
    log:
        "results/logs/quantize/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}.log",
    benchmark:
        "results/benchmarks/quantize/{dataset}/{arch}/{attack}/w{bits}/{defense}/seed{seed}.tsv"
    wildcard_constraints:
        bits=r"(?!32$)\d+",
        defense=_alt(["none", *FP_DEFENSES]),
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        quant=_canonical(config["quant"]),
        version=qcbench.__version__,
    script:
        "../scripts/quantize.py"
