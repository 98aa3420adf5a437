# The "Quantization Blindspots" detection benchmark: every detector of `detection.detectors` on one
# FP model (an attacked or the clean one) at one precision -> one Parquet file, a row per
# detector; the precision is a wildcard. One job per model and precision shares the quantized
# model, its BA/ASR and the start-up (torch import, data) among the detectors.
localrules:
    collate_detection,


rule detect:
    input:
        data=data_file,
        model=fp_model,
    output:
        "results/{dataset}/{arch}/{attack}/w32/none/seed{seed}/detect/{precision}.parquet",
    log:
        "results/logs/detect/{dataset}/{arch}/{attack}/seed{seed}/{precision}.log",
    benchmark:
        "results/benchmarks/detect/{dataset}/{arch}/{attack}/seed{seed}/{precision}.tsv"
    wildcard_constraints:
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
        detectors=DETECTION.get("detectors", []),
        specs=detector_specs,
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
