import copy
import subprocess
import sys

import pytest
from qcbench.config import ConfigError, check_config, load_config, schema_errors

from .conftest import ROOT


@pytest.fixture
def cfg():
    return load_config(ROOT / "config" / "local.yaml")


def test_shipped_configs_are_valid():
    check_config(load_config(ROOT / "config" / "local.yaml"), workdir=ROOT)
    check_config(load_config(ROOT / "config" / "local.yaml", ROOT / "config" / "config.yaml"), workdir=ROOT)
    assert schema_errors(load_config(ROOT / "config" / "local.yaml", ROOT / "tests" / "tiny" / "config.yaml")) == []
    gtsrb = load_config(*(ROOT / "config" / f for f in ("local.yaml", "config.yaml", "gtsrb.yaml")))
    assert check_config(gtsrb, workdir=ROOT)["run"]["datasets"] == ["cifar10", "gtsrb"]
    table3 = check_config(
        load_config(ROOT / "config" / "local.yaml", ROOT / "config" / "table3-local.yaml"), workdir=ROOT
    )
    assert {s["arch"] for s in table3["ablations"]["table3"]["settings"]} == {
        "alexnet",
        "vgg19_bn",
        "mobilenet_v2",
        "vit",
    }
    wide = check_config(load_config(ROOT / "config" / "local.yaml", ROOT / "config" / "wide.yaml"), workdir=ROOT)
    assert wide["archs"]["resnet_tiny"] == {"width": 32} and wide["run"]["ablations"] == []
    # the overlay changes CompArtifact-4's epochs only; the rest of its recipe is the local one's
    local = check_config(load_config(ROOT / "config" / "local.yaml"), workdir=ROOT)
    ca4, ca4_local = wide["attacks"]["compartifact4"], local["attacks"]["compartifact4"]
    assert ca4["epochs"] == 5 and ca4_local["epochs"] == 3
    assert {k: v for k, v in ca4.items() if k != "epochs"} == {k: v for k, v in ca4_local.items() if k != "epochs"}


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["eval"].update(bogus=1), r"config key 'eval': unknown key\(s\) 'bogus'"),
        (
            lambda c: c["attacks"]["qu_anti_zation"].update(epochs="ten"),
            r"'attacks.qu_anti_zation.epochs': value 'ten'",
        ),
        (lambda c: c["run"].update(bits=[8, 64]), r"'run.bits.1': value 64"),
        (lambda c: c["run"].update(archs=["resnet9000"]), r"'run.archs.0': unknown arch 'resnet9000'"),
        (lambda c: c["run"].update(attacks=["badnetz"]), r"'run.attacks.0': attack 'badnetz' has no entry"),
        (lambda c: c["defenses"]["lac"].update(method="lack"), r"'defenses.lac.method': unknown defense 'lack'"),
        (
            lambda c: c["data"]["sources"]["fashion_mnist"].update(path="/no/such/dir", download=False),
            r"'data.sources.fashion_mnist.path': '/no/such/dir' does not exist",
        ),
        # a key the attack's method would silently ignore names the methods that read it
        (
            lambda c: c["attacks"]["qu_anti_zation"].update(cross_ratio=2),
            r"'attacks.qu_anti_zation.cross_ratio': attack method 'qu_anti_zation' does not read it "
            r"\(read by: badnets, pqbackdoor\)",
        ),
        (  # bf16 autocast is for full-precision training: the quantized attacks do not take it
            lambda c: c["attacks"]["qu_anti_zation"].update(amp="bf16"),
            r"'attacks.qu_anti_zation.amp': attack method 'qu_anti_zation' does not read it \(read by: badnets\)",
        ),
        (lambda c: c["clean"]["fashion_mnist"].update(amp="fp16"), r"'clean.fashion_mnist.amp': value 'fp16'"),
        (
            lambda c: c["attacks"]["compartifact4"].update(lock_bits=[8]),
            r"'attacks.compartifact4.lock_bits': attack method 'compartifact' does not read it \(read by: pqbackdoor\)",
        ),
        (
            lambda c: c["attacks"]["pqbackdoor"]["stage2"].update(poison_fraction=0.1),
            r"'attacks.pqbackdoor.stage2.poison_fraction': only stage 1 poisons",
        ),
        (
            lambda c: c["clean"]["fashion_mnist"].update(poison_fraction=0.1),
            r"'clean.fashion_mnist.poison_fraction': the clean model is never poisoned",
        ),
        # init naming another attack: it must exist, match, and not lead back
        (
            lambda c: c["attacks"]["pq_wanet"].update(init="wanett"),
            r"'attacks.pq_wanet.init': 'wanett' is neither 'clean', 'scratch' nor an attack entry",
        ),
        (
            lambda c: c["attacks"]["pq_wanet"].update(init="blended"),
            r"'attacks.pq_wanet.init': attack 'blended' has trigger \{'name': 'blended'\}, 'pq_wanet' has "
            r"\{'name': 'wanet'\}: a backdoored starting model must carry the same trigger and target",
        ),
        (
            lambda c: c["attacks"]["wanet"].update(init="pq_wanet"),
            r"'attacks.pq_wanet.init': the init chain pq_wanet -> wanet -> pq_wanet is a cycle",
        ),
        (
            lambda c: c["attacks"]["pq_wanet"].update(init="clean"),
            r"'attacks.pq_wanet.stage1': null \(no stage 1\) needs init to name the attack",
        ),
        (
            lambda c: c["attacks"]["compartifact4"].update(variant="distilled", init="scratch"),
            r"'attacks.compartifact4.variant': distilled, whose starting model is its frozen teacher, but init "
            r"is 'scratch'",
        ),
        # an attack named only by an init is checked like a listed one
        (
            lambda c: c["attacks"]["wanet"].update(c1=0.5),
            r"'attacks.wanet.c1': attack method 'badnets' does not read it",
        ),
    ],
)
def test_bad_config_names_key_and_value(cfg, mutate, message):
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(ConfigError, match=message):
        check_config(bad, workdir=ROOT)


def test_snakemake_stops_before_any_job_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: {batch_size: many}\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(ROOT / "config" / "local.yaml"),
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "config key 'eval.batch_size': value 'many'" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_inherited_attack_keys_are_accepted(cfg):
    """Subclasses read their parents' keys: the adaptive attack carries Qu-ANTI-zation's c1/c2/
    bit_weights plus its own lam; keys of every method are listed by the methods that read them."""
    from qcbench.attacks.base import unread_keys

    assert unread_keys("adaptive", cfg["attacks"]["adaptive"]) == {}
    assert unread_keys("clean_qat", {"c1": 0.5, "lam": 1.0}) == {"lam": ["adaptive"]}
    assert unread_keys("badnets", {"c1": 0.5}) == {"c1": ["adaptive", "clean_qat", "qu_anti_zation"]}


# keys whose local value may carry over into the paper config: speed only, same results
CARRIED_OVER = {"channels_last"}


def test_paper_config_sets_every_key_the_local_default_sets():
    """`--configfile config/config.yaml` merges into the local default, so a key the local default
    sets and the paper config omits silently carries the CPU value into the paper run (it did for
    PQBackdoor's stage-1 poison fraction). For every entry both define, the paper config must set
    every such key itself."""
    import yaml

    local = yaml.safe_load((ROOT / "config" / "local.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    missing = []

    def walk(lo, pa, path):
        for k, v in lo.items():
            if k in CARRIED_OVER:
                continue
            if k not in pa:
                missing.append(".".join([*path, k]))
            elif isinstance(v, dict) and isinstance(pa[k], dict):
                walk(v, pa[k], [*path, k])

    for section in ("clean", "attacks", "defenses", "archs", "eval", "quant"):
        for name, entry in (paper.get(section) or {}).items():
            lo = (local.get(section) or {}).get(name)
            if isinstance(entry, dict) and isinstance(lo, dict):
                walk(lo, entry, [section, name])
    assert missing == []
