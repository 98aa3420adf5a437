from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
w = sm.wildcards
stages.evaluate_backend(sm.config, w.backend, sm.input.fp, sm.input.data, sm.output.metrics, dict(w), sm.threads)
