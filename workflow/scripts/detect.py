from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
wc = sm.wildcards
keys = {"dataset": wc.dataset, "arch": wc.arch, "attack": wc.attack, "seed": wc.seed}
stages.detect(
    sm.config, sm.params.detectors, wc.precision, sm.input.data, sm.input.model, sm.output[0], keys, sm.threads
)
