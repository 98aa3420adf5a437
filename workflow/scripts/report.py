from pathlib import Path

from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
results = Path(sm.input.metrics).parent  # the results folder the notebook reads
stages.render_report(sm.input.notebook, str(results), sm.output.html, executed=sm.output.notebook)
