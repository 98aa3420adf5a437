"""The ``schemes`` table: each attack in the attacker's deployment quantizer, the scheme it is
built against, its cells from the config entry ``ablations.schemes``."""

from __future__ import annotations

from qcbench.plan import attack_spec, table_spec
from qcbench.tables._ablation import model_block, unconfigured
from qcbench.tables._base import Block, TableContext, register_table


@register_table("schemes")
def schemes(ctx: TableContext) -> list[Block]:
    """Each attack in the quantizer it is built against (its declared scheme, the column header),
    where Table 1 shows it in the deployer's (``quant.deployer_scheme``): the entry's defenses
    name ``scheme: attacker`` (``requantize``: no defense there; LAC+PDA, EFRAP), quantizing the
    FP model with the attack's own family (:mod:`qcbench.defenses.requantize`). Beside them the
    no-defense row of the deployer's quantizer. It shows whether a backdoor fires in its own
    quantizer and whether the defenses remove it there."""
    from qcbench.cells import ATTACKER, scheme_name

    spec = table_spec(ctx.config, "schemes")
    title = "The attacker's deployment quantizer"
    if spec is None:
        return unconfigured("schemes", title)

    def own(a: str) -> str:  # the attack's own scheme, as the quantize and defend stages pick it
        return scheme_name(ctx.config, attack_spec(ctx.config, a), ATTACKER)

    deployer = (ctx.config.get("quant") or {}).get("deployer_scheme")
    return model_block(
        ctx, "schemes", f"{title}: each attack in the scheme it is built against", spec,
        lambda a: "", column_of=lambda a: f"{a} ({own(a)}) BA / ASR",
        none_label=f"no defense, in the deployer's quantizer ({deployer})" if deployer else "no defense",
        note=" Rows \"in the attacker's quantizer\" quantize the FP model with the attack's own scheme "
        "(in the column header); \"–\": the attack is not built for that bit width.",
    )  # fmt: skip
