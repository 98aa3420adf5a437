from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
w = sm.wildcards
keys = {"dataset": w.dataset, "arch": w.arch, "attack": w.attack, "bits": int(w.bits), "seed": int(w.seed)}
stages.lac_curve(sm.config, int(w.seed), sm.input.data, sm.input.quantized, sm.output.curve, keys, sm.threads)
