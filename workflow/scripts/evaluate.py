from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
stages.evaluate(sm.config, sm.input.model, sm.input.data, sm.output.metrics, dict(sm.wildcards), sm.threads)
