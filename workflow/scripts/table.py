from _log import to_log

to_log(snakemake)  # noqa: F821
from qcbench import stages  # noqa: E402

sm = snakemake  # noqa: F821
frames = dict(zip(sm.input.keys(), sm.input, strict=False))
stages.render_table(
    sm.wildcards.table,
    sm.input.metrics,
    outputs={"md": sm.output.md, "tex": sm.output.tex, "html": sm.output.html},
    config=sm.params.config,
    paper=sm.input.paper,
    frames={k: v for k, v in frames.items() if k not in ("metrics", "paper")},
)
