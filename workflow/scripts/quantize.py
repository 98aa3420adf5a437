from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
stages.quantize(sm.config, int(sm.wildcards.bits), sm.input.data, sm.input.fp, sm.output.model, sm.threads)
