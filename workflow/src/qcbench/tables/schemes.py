"""The ``schemes`` table: each attack in the quantizer it was built against and in a deployer's,
its cells from the config entry ``ablations.schemes``."""

from __future__ import annotations

from qcbench.attacks import declared_scheme
from qcbench.plan import attack_spec, table_spec
from qcbench.tables._ablation import model_block, unconfigured
from qcbench.tables._base import Block, TableContext, register_table


@register_table("schemes")
def schemes(ctx: TableContext) -> list[Block]:
    """Each attack in the quantizer it was built against and in a deployer's: the entry's
    defenses that name a ``scheme`` (``requantize``: no defense; LAC+PDA …) quantize the FP model
    with that family instead of the attack's (:mod:`qcbench.defenses.requantize`). It shows
    whether a backdoor fires outside its own quantizer, and whether LAC+PDA keeps the FP model's
    BA within a point on the grid it may round to."""
    spec = table_spec(ctx.config, "schemes")
    if spec is None:
        return unconfigured("schemes", "Quantizers (attack's vs deployer's)")

    def own(a: str) -> str:  # the attack's declared scheme, as the quantize stage picks it
        return declared_scheme(attack_spec(ctx.config, a), (ctx.config.get("quant") or {}).get("default_scheme"))

    return model_block(
        ctx, "schemes", "Quantizers: each attack in its own scheme and in the deployer's", spec,
        lambda a: "", column_of=lambda a: f"{a} ({own(a)}) BA / ASR",
        note=" Rows without \"in <scheme>\" use the attack's own scheme (in the column header); "
        "\"–\": the attack is not built for that bit width.",
    )  # fmt: skip
