# Figure 2's data: LAC+PDA (defense `lac`) on benign, 90:10 mixed and all-poisoned defender data,
# the whole quantized model's BA/ASR every figures.fig2.eval_every iterations (qcbench.lac_curve).
rule lac_curve:
    input:
        data=data_file,
        quantized=undefended_model,
    output:
        curve="results/{dataset}/{arch}/{attack}/w{bits}/lac/seed{seed}/lac_curve.parquet",
    log:
        "results/logs/lac_curve/{dataset}/{arch}/{attack}/w{bits}/seed{seed}.log",
    benchmark:
        "results/benchmarks/lac_curve/{dataset}/{arch}/{attack}/w{bits}/seed{seed}.tsv"
    wildcard_constraints:
        bits=r"(?!32$)\d+",
    # the longest job after the attacks: started as soon as its input exists
    priority: 10
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=2160,
    params:
        spec=_canonical(config["defenses"].get("lac")),
        figure=_canonical((config.get("figures") or {}).get("fig2")),
        version=qcbench.__version__,
    script:
        "../scripts/lac_curve.py"
