"""Collation: every metrics file checked against the pandera schema, errors name the file, the
column and the value; nothing is written when a check fails."""

import math

import pandas as pd
import pytest
from qcbench import io, stages


def _row(**kw) -> dict:
    row = dict(dataset="fashion_mnist", arch="resnet_tiny", attack="qa", bits=4, defense="none", seed=0,
               backend="sim", scheme="qa", variant="", ba=88.0, asr=90.0, asr_all=91.0, wall_s=1.5, n_test=1000,
               config_hash="abc123", git_commit="0123456789", versions="{}")  # fmt: skip
    return row | kw


def _write(path, **kw):
    df = pd.DataFrame([_row(**kw)]).astype(io.METRIC_COLUMNS)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return str(path)


@pytest.fixture
def good(tmp_path):
    return [
        _write(tmp_path / "none.parquet"),
        _write(tmp_path / "lac.parquet", defense="lac", ba=87.0, asr=2.0),
        _write(tmp_path / "fp.parquet", attack="clean", bits=32, asr=float("nan"), asr_all=float("nan")),
    ]


def test_collate_checks_and_adds_der(good, tmp_path):
    out = tmp_path / "metrics.parquet"
    df = stages.collate(good, str(out))
    back = pd.read_parquet(out)
    assert len(back) == 3 and set(back.columns) >= {*io.METRIC_COLUMNS, "der"}
    lac = back[back.defense == "lac"].iloc[0]
    assert lac.der == pytest.approx(100 * (0.88 - 0.01 + 1) / 2)  # ASR 90 -> 2, BA 88 -> 87
    assert back[back.defense == "none"].der.isna().all()
    io.check_metrics(df, "collated", collated=True)


@pytest.mark.parametrize(
    ("change", "column", "value"),
    [
        ({"ba": 120.0}, "ba", "120.0"),
        ({"asr": -1.0}, "asr", "-1.0"),
        ({"bits": 33}, "bits", "33"),
        ({"bits": 1}, "bits", "1"),
        ({"backend": ""}, "backend", "''"),
        ({"seed": -2}, "seed", "-2"),
        ({"ba": float("nan")}, "ba", "missing a value"),
    ],
)
def test_a_malformed_file_is_named_and_nothing_is_written(good, tmp_path, change, column, value):
    bad = _write(tmp_path / "cells" / "bad.parquet", **change)
    out = tmp_path / "metrics.parquet"
    with pytest.raises(io.MetricsError) as err:
        stages.collate([*good, bad], str(out))
    msg = str(err.value)
    assert msg.startswith(bad) and f"column {column!r}" in msg and value in msg
    assert not out.exists() and not list(tmp_path.glob("metrics.parquet*"))


def test_wrong_dtype_missing_column_and_unreadable_file(good, tmp_path):
    df = pd.DataFrame([_row()]).astype(io.METRIC_COLUMNS)
    wrong = tmp_path / "wrong.parquet"
    df.astype({"seed": "float64"}).to_parquet(wrong)
    with pytest.raises(io.MetricsError, match=r"wrong\.parquet: column 'seed' has the wrong dtype"):
        stages.collate([*good, str(wrong)], str(tmp_path / "m.parquet"))
    lacking = tmp_path / "lacking.parquet"
    df.drop(columns="asr_all").to_parquet(lacking)
    with pytest.raises(io.MetricsError, match=r"lacking\.parquet: metrics file lacks columns \['asr_all'\]"):
        stages.collate([*good, str(lacking)], str(tmp_path / "m.parquet"))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(io.MetricsError, match=r"garbage\.parquet: not a readable Parquet file"):
        stages.collate([*good, str(garbage)], str(tmp_path / "m.parquet"))
    assert not (tmp_path / "m.parquet").exists()


def test_two_files_with_the_same_key_are_refused(good, tmp_path):
    twin = _write(tmp_path / "twin.parquet", ba=10.0)  # same key as none.parquet
    with pytest.raises(io.MetricsError, match=r"none\.parquet: the same key .* also comes from .*twin\.parquet"):
        stages.collate([*good, twin], str(tmp_path / "m.parquet"))


def test_collated_der_out_of_range_is_refused():
    df = pd.DataFrame([_row()]).astype(io.METRIC_COLUMNS).assign(der=150.0)
    with pytest.raises(io.MetricsError, match="column 'der' value 150.0"):
        io.check_metrics(df, "results/metrics.parquet", collated=True)
    io.check_metrics(df.drop(columns="der"), "cell")  # a cell file has no der


def test_der_reference_is_the_no_defense_cell_of_the_same_scheme(tmp_path):
    """A defense in a deployer's scheme is rated against that scheme's no-defense row (requantize),
    never against the attack's own-scheme "none" row; the scheme switch alone rates 50, no change."""
    academic = {"scheme": "mqbench_academic"}
    cells = [
        _write(tmp_path / "none.parquet", ba=88.0, asr=90.0),  # the attack's own scheme, qa
        _write(tmp_path / "academic.parquet", defense="academic", ba=86.0, asr=40.0, **academic),
        _write(tmp_path / "lac_academic.parquet", defense="lac_academic", ba=85.0, asr=4.0, **academic),
        _write(tmp_path / "lac.parquet", defense="lac", ba=87.0, asr=2.0),
        _write(tmp_path / "orphan.parquet", defense="lac_x86", ba=87.0, asr=2.0, scheme="x86"),
    ]
    df = stages.collate(cells, str(tmp_path / "m.parquet"), no_defense=["academic"]).set_index("defense")
    assert df.der["academic"] == pytest.approx(50.0)  # its own reference: BA and ASR unchanged
    assert df.der["lac_academic"] == pytest.approx(100 * (0.36 - 0.01 + 1) / 2)  # ASR 40 -> 4, BA 86 -> 85
    assert df.der["lac"] == pytest.approx(100 * (0.88 - 0.01 + 1) / 2)  # own scheme: against "none"
    assert math.isnan(df.der["lac_x86"])  # no no-defense row in its scheme
    assert math.isnan(df.der["none"])
    # without knowing which entries are no defense, nothing in the deployer's scheme is rated
    plain = stages.collate(cells, str(tmp_path / "p.parquet")).set_index("defense")
    assert plain.der[["academic", "lac_academic", "lac_x86"]].isna().all()
    assert plain.der["lac"] == df.der["lac"]


def test_none_is_preferred_when_a_requantize_row_shares_its_scheme(tmp_path):
    cells = [
        _write(tmp_path / "none.parquet", ba=88.0, asr=90.0),
        _write(tmp_path / "as_attacked.parquet", defense="as_attacked", ba=80.0, asr=60.0),
        _write(tmp_path / "lac.parquet", defense="lac", ba=87.0, asr=2.0),
    ]
    df = stages.collate(cells, str(tmp_path / "m.parquet"), no_defense=["as_attacked"]).set_index("defense")
    assert df.der["lac"] == pytest.approx(100 * (0.88 - 0.01 + 1) / 2)
    assert df.der["as_attacked"] == pytest.approx(100 * (0.30 - 0.08 + 1) / 2)
