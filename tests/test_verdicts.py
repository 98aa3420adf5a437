"""The verdicts table (qcbench.tables.verdicts): every check passes and fails on the row it reads, with
the measured figure shown; missing rows read "–"; only QCB attacks get rows; thresholds come
from config key verdicts."""

import pandas as pd
import pytest
from qcbench.config import check_config, load_config
from qcbench.tables import TABLES, TableContext, render
from qcbench.tables.verdicts import DEFAULTS, cell_verdicts, is_qcb, thresholds

from .conftest import ROOT

CONFIG = {
    "run": {"defenses": ["lac", "efrap"]},
    "attacks": {
        "pq": {"method": "pqbackdoor"},
        "qa": {"method": "qu_anti_zation"},
        "bn": {"method": "badnets"},
        "cq": {"method": "clean_qat"},
    },
}


def _row(attack, bits, defense, ba, asr, seed=0, backend="sim"):
    return dict(dataset="fashion_mnist", arch="resnet_tiny", attack=attack, bits=bits, defense=defense, seed=seed,
                backend=backend, ba=ba, asr=asr, asr_all=asr, der=float("nan"))  # fmt: skip


def _frame(fp_ba=88.0, fp_asr=5.0, q_asr=95.0, lac=(1.5, 87.5), efrap=(0.5, 80.0), real=None):
    rows = [
        _row("clean", 32, "none", 90.0, 0.0),
        _row("pq", 32, "none", fp_ba, fp_asr),
        _row("pq", 8, "none", 89.0, q_asr),
        _row("pq", 8, "lac", lac[1], lac[0]),
        _row("pq", 8, "efrap", efrap[1], efrap[0]),
    ]
    for backend, asr in (real or {}).items():
        rows.append(_row("pq", 8, "none", 88.0, asr, backend=backend))
    return pd.DataFrame(rows)


def _verdict(df, **kw):
    return cell_verdicts(df, "pq", 8, 0, ["lac", "efrap"], thresholds({}) | kw)


def test_a_cell_that_behaves_passes_every_check_and_shows_its_figures():
    v = _verdict(_frame(real={"torch_x86": 93.0, "onnxruntime": 4.0}))
    assert {k: ok for k, (ok, _) in v.items()} == {
        "ba_kept": True, "dormant": True, "fires": True, "runtime": True, "purified:lac": True, "purified:efrap": False,
    }  # fmt: skip
    assert v["ba_kept"][1] == "-2.00" and v["dormant"][1] == "5.00" and v["fires"][1] == "95.00"
    assert v["runtime"][1] == "93.00 (torch_x86)"  # the best runtime, named
    assert v["purified:lac"][1] == "1.50 / -0.50"
    assert v["purified:efrap"][1] == "0.50 / -8.00"  # ASR fine, BA 8 points under the FP model


@pytest.mark.parametrize(
    ("kw", "check"),
    [
        ({"fp_ba": 86.9}, "ba_kept"),  # 3.1 points under the clean model
        ({"fp_asr": 10.19}, "dormant"),
        ({"q_asr": 89.99}, "fires"),
        ({"lac": (2.01, 87.5)}, "purified:lac"),  # ASR over 2
        ({"lac": (0.0, 86.9)}, "purified:lac"),  # BA more than 1 point under FP
    ],
)
def test_each_check_fails_just_past_its_bar(kw, check):
    v = _verdict(_frame(**kw))
    assert v[check][0] is False
    assert all(ok for k, (ok, _) in v.items() if k not in (check, "runtime", "purified:efrap"))


def test_bars_are_inclusive_and_thresholds_come_from_config():
    v = _verdict(_frame(fp_ba=87.0, fp_asr=10.0, q_asr=90.0, lac=(2.0, 87.0)))
    assert all(v[k][0] for k in ("ba_kept", "dormant", "fires", "purified:lac"))
    t = thresholds({"verdicts": {"dormant_asr": 2}})
    assert t == DEFAULTS | {"dormant_asr": 2.0}
    assert cell_verdicts(_frame(), "pq", 8, 0, [], t)["dormant"][0] is False


def test_missing_rows_read_as_not_produced():
    df = _frame()
    v = cell_verdicts(df[df.attack != "clean"], "pq", 8, 0, ["lac", "ftsam"], thresholds({}))
    assert v["ba_kept"] == (None, "–") and v["runtime"] == (None, "–") and v["purified:ftsam"] == (None, "–")
    assert v["dormant"][0] is True


def test_only_quantization_conditioned_attacks_get_rows():
    assert is_qcb("pqbackdoor") and is_qcb("qu_anti_zation") and is_qcb("compartifact") and is_qcb("adaptive")
    assert not is_qcb("badnets") and not is_qcb("clean_qat") and not is_qcb("no_such_method")
    df = pd.concat([_frame(), pd.DataFrame([_row("bn", 32, "none", 90, 97), _row("bn", 8, "none", 90, 97),
                                            _row("cq", 32, "none", 90, 1), _row("cq", 8, "none", 90, 1)])])  # fmt: skip
    md = render("verdicts", TableContext(df, CONFIG))["md"]
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert [ln.split(" | ")[0] for ln in lines] == ["| pq"]
    assert "✓ 5.00" in md and "✗ 0.50 / -8.00" in md
    assert "FP ASR (dormant): 1 of 1" in md and "efrap: ASR / BA − FP: 0 of 1" in md


def test_registered_and_shipped_configs_validate_the_thresholds():
    assert "verdicts" in TABLES.names()
    cfg = load_config(ROOT / "config/local.yaml")
    cfg["verdicts"] = {"dormant_asr": 120}
    with pytest.raises(Exception, match="dormant_asr|120"):
        check_config(cfg, workdir=ROOT)


def test_fires_reads_the_no_defense_row_in_the_attacks_own_scheme():
    """With the cells in a deployer's quantizer, "fires" reads the `requantize` row in the attack's
    own scheme (scheme column), not the deployer's `none` row; "–" where it is not produced."""
    df = _frame(q_asr=1.0).assign(scheme="mqbench_academic")
    own = pd.DataFrame([_row("pq", 8, "none_attacker", 88.0, 96.0)]).assign(scheme="pq")
    both = pd.concat([df, own], ignore_index=True)
    t = thresholds({})
    assert cell_verdicts(both, "pq", 8, 0, [], t, "pq", ["none_attacker"])["fires"] == (True, "96.00")
    assert cell_verdicts(both, "pq", 8, 0, [], t)["fires"] == (False, "1.00")  # no own scheme given: `none`
    assert cell_verdicts(df, "pq", 8, 0, [], t, "pq", ["none_attacker"])["fires"] == (None, "–")
    # the cells already in the attack's scheme: the `none` row is the one
    assert cell_verdicts(df, "pq", 8, 0, [], t, "mqbench_academic", ["none_attacker"])["fires"] == (False, "1.00")
    cfg = CONFIG | {"quant": {"default_scheme": "qa", "deployer_scheme": "mqbench_academic"},
                    "attacks": {"pq": {"method": "pqbackdoor", "scheme": "pq"}},  # resolved: the class's scheme
                    "defenses": {"none_attacker": {"method": "requantize", "scheme": "attacker"}}}  # fmt: skip
    md = render("verdicts", TableContext(both, cfg))["md"]
    assert "✓ 96.00" in md
