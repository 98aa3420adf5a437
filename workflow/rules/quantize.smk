# Quantize an FP model with its attack's scheme at {bits}, calibrated on the defender subset.
rule quantize:
    input:
        data=data_file,
        fp=fp_model,
    output:
        model="results/{dataset}/{arch}/{attack}/w{bits}/none/seed{seed}/model.safetensors",
        meta="results/{dataset}/{arch}/{attack}/w{bits}/none/seed{seed}/model.json",
    log:
        "results/logs/quantize/{dataset}/{arch}/{attack}/w{bits}/seed{seed}.log",
    wildcard_constraints:
        bits=r"(?!32$)\d+",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        quant=config["quant"],
        version=qcbench.__version__,
    script:
        "../scripts/quantize.py"
