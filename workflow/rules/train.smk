# Clean models are trained once per (dataset, arch, seed) and reused by every attack.
rule train_clean:
    input:
        data=data_file,
    output:
        model="results/{dataset}/{arch}/clean/w32/none/seed{seed}/model.safetensors",
        meta="results/{dataset}/{arch}/clean/w32/none/seed{seed}/model.json",
    log:
        "results/logs/train_clean/{dataset}/{arch}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_clean/{dataset}/{arch}/seed{seed}.tsv"
    # long jobs that gate most of the DAG start first, so that two cores stay busy to the end
    priority: 20
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        spec=clean_spec,
        version=qcbench.__version__,
    script:
        "../scripts/train_clean.py"


# One generic attack rule; the attack is a wildcard dispatched through qcbench's registry. Attacks
# that start from the clean model (init: clean) take it as input; init: scratch ones do not.
rule attack:
    input:
        unpack(attack_inputs),
    output:
        model="results/{dataset}/{arch}/{attack}/w32/none/seed{seed}/model.safetensors",
        meta="results/{dataset}/{arch}/{attack}/w32/none/seed{seed}/model.json",
    log:
        "results/logs/attack/{dataset}/{arch}/{attack}/seed{seed}.log",
    benchmark:
        "results/benchmarks/attack/{dataset}/{arch}/{attack}/seed{seed}.tsv"
    wildcard_constraints:
        attack=ATTACK_NAMES,
    priority: 20
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        spec=attack_spec,
        version=qcbench.__version__,
    script:
        "../scripts/attack.py"
