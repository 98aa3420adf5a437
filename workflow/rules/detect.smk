# The "Quantization Blindspots" detection benchmark: one detector on one FP model (an attacked or
# the clean one) at one precision -> one Parquet row; detector and precision are wildcards.
localrules:
    collate_detection,


rule detect:
    input:
        data=data_file,
        model=fp_model,
    output:
        "results/{dataset}/{arch}/{attack}/w32/none/seed{seed}/detect/{detector}.{precision}.parquet",
    log:
        "results/logs/detect/{dataset}/{arch}/{attack}/seed{seed}/{detector}.{precision}.log",
    benchmark:
        "results/benchmarks/detect/{dataset}/{arch}/{attack}/seed{seed}/{detector}.{precision}.tsv"
    wildcard_constraints:
        detector=DETECTOR_NAMES,
        precision=PRECISION_NAMES,
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        spec=detector_spec,
        version=qcbench.__version__,
    script:
        "../scripts/detect.py"


rule collate_detection:
    input:
        detection_files(),
    output:
        "results/detection.parquet",
    log:
        "results/logs/collate_detection.log",
    conda:
        "../../envs/qcbench.yaml"
    container:
        "container/qcbench.sif"
    script:
        "../scripts/collate_detection.py"
