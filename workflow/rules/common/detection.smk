# Input functions and constants of the detection benchmark (config key `detection`) and of
# Table 6, PDA as a plug-in (config key `table6`).
from qcbench.detection import PRECISION_RE
from qcbench.plan import table6_cells

DETECTION = config.get("detection") or {}
PRECISION_NAMES = PRECISION_RE.pattern.strip("^$")


def detection_files():
    """Every per-(model, precision) file results/detection.parquet collates: each
    detection attack at `precisions`, the clean model at `clean_precisions`."""
    models = [(a, DETECTION["precisions"]) for a in DETECTION.get("attacks", [])]
    if DETECTION.get("clean_precisions"):
        models.append(("clean", DETECTION["clean_precisions"]))
    return [
        f"results/{ds}/{arch}/{atk}/w32/none/seed{seed}/detect/{prec}.parquet"
        for ds in DETECTION.get("datasets", [])
        for arch in DETECTION.get("archs", [])
        for atk, precisions in models
        for seed in DETECTION.get("seeds", [])
        for prec in precisions
    ]


def detector_specs(wc):
    """The settings of every detector the job runs (a change to one reruns its jobs)."""
    return {
        d: _canonical(DETECTION["settings"][d]) for d in DETECTION.get("detectors", [])
    }


def table6_metrics():
    """The metrics files of Table 6 (qcbench.plan.table6_cells; collate adds them to
    results/metrics.parquet)."""
    return table6_cells(config)
