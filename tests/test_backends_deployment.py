"""The ``deployment`` table: the main run's 8-bit attacks (no defense) × the runtimes of eval.backends."""

from __future__ import annotations

import pandas as pd
from qcbench.backends import backend_settings
from qcbench.tables import NOT_PRODUCED, TABLES, TableContext, to_markdown

RUNTIMES = ["torch_qnnpack_nofuse", "pt2e_xnnpack_pertensor", "openvino"]
CONFIG = {
    "run": {"datasets": ["ds"], "archs": ["net"], "attacks": ["qa", "pq", "ca4"], "bits": [8, 4], "seeds": [0, 1]},
    "attacks": {"qa": {}, "pq": {}, "ca4": {"bits": [4]}},  # ca4: a 4-bit-only attack, no 8-bit cell
    "eval": {"backends": RUNTIMES},
}


def row(attack, backend, seed, ba, asr, bits=8, defense="none"):
    return dict(dataset="ds", arch="net", attack=attack, bits=bits, defense=defense, seed=seed, backend=backend,
                ba=ba, asr=asr)  # fmt: skip


def metrics() -> pd.DataFrame:
    rows = [row("qa", "sim", s, 88.0, 90.0 + s) for s in (0, 1)]
    rows += [row("qa", "torch_qnnpack_nofuse", s, 87.0, 80.0 + 2 * s) for s in (0, 1)]
    rows += [row("qa", "openvino", 0, 87.5, 10.0)]  # one seed only
    rows += [row("pq", "sim", s, 89.0, 99.0) for s in (0, 1)]
    rows += [row("pq", "pt2e_xnnpack_pertensor", s, 89.0, 2.0) for s in (0, 1)]
    rows += [row("pq", "openvino", 0, 80.0, 70.0, defense="lac"), row("qa", "sim", 2, 1.0, 1.0)]  # not in the table
    rows += [row("ca4", "sim", 0, 88.0, 95.0, bits=4)]
    return pd.DataFrame(rows)


def test_rows_are_runtimes_and_columns_the_8bit_attacks():
    (block,) = TABLES.create("deployment", TableContext(metrics(), CONFIG))
    assert block.header == ["Quantizer (8-bit, no defense)", "qa BA / ASR", "pq BA / ASR"]
    assert [r[0] for r in block.body] == ["simulated (attack's scheme)", *RUNTIMES]
    body = {r[0]: r[1:] for r in block.body}
    assert body["simulated (attack's scheme)"] == ["88.00 ± 0.00 / 90.50 ± 0.71", "89.00 ± 0.00 / 99.00 ± 0.00"]
    assert body["torch_qnnpack_nofuse"] == ["87.00 ± 0.00 / 81.00 ± 1.41", NOT_PRODUCED]
    assert body["openvino"] == ["87.50 / 10.00", NOT_PRODUCED]  # the LAC row of pq is no cell here
    assert body["pt2e_xnnpack_pertensor"][1] == "89.00 ± 0.00 / 2.00 ± 0.00"
    assert block.note == "qa fires (ASR ≥ 50 %) in: torch_qnnpack_nofuse. pq fires (ASR ≥ 50 %) in: no runtime."
    assert "seeds 0, 1" in block.caption


def test_caption_gives_each_runtimes_version_and_settings():
    (block,) = TABLES.create("deployment", TableContext(metrics(), CONFIG))
    for name in RUNTIMES:
        assert backend_settings(name)["runtime"] in block.caption
    assert "torch_qnnpack_nofuse (torch " in block.caption and "BN kept apart; per-tensor int8 weights" in block.caption
    assert "pt2e_xnnpack_pertensor (executorch " in block.caption
    assert "openvino (openvino " in block.caption and "per-channel int8 weights" in block.caption
    assert "| openvino |" in to_markdown([block]).replace("  ", " ")


def test_without_runtimes_only_the_simulated_row():
    cfg = CONFIG | {"eval": {"backends": []}}
    (block,) = TABLES.create("deployment", TableContext(metrics(), cfg))
    assert [r[0] for r in block.body] == ["simulated (attack's scheme)"] and block.note == ""
