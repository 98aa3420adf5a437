import copy
import subprocess
import sys

import pytest
from qcbench.config import LOCAL, PAPER, ConfigError, check_config, load_config, schema_errors

from .conftest import ROOT, TINY_CONFIGS


@pytest.fixture
def cfg():
    return load_config()  # the local default: the paper config with config/local.yaml layered on it


def test_shipped_configs_are_valid():
    check_config(load_config(), workdir=ROOT)
    check_config(load_config(PAPER), workdir=ROOT)
    assert schema_errors(load_config(*TINY_CONFIGS)) == []
    gtsrb = load_config(ROOT / "config" / "gtsrb.yaml")
    assert check_config(gtsrb, workdir=ROOT)["run"]["datasets"] == ["cifar10", "gtsrb"]
    table3 = check_config(load_config(LOCAL, ROOT / "config" / "table3-local.yaml"), workdir=ROOT)
    assert {s["arch"] for s in table3["ablations"]["table3"]["settings"]} == {
        "alexnet",
        "vgg19_bn",
        "mobilenet_v2",
        "vit",
    }
    assert {s["dataset"] for s in table3["ablations"]["table3"]["settings"]} == {"fashion_mnist"}
    wide = check_config(load_config(LOCAL, ROOT / "config" / "wide.yaml"), workdir=ROOT)
    assert wide["archs"]["resnet_tiny"] == {"width": 32} and wide["run"]["ablations"] == []
    # the overlay changes CompArtifact-4's epochs only; the rest of its recipe is the local one's
    local = check_config(load_config(), workdir=ROOT)
    ca4, ca4_local = wide["attacks"]["compartifact4"], local["attacks"]["compartifact4"]
    assert ca4["epochs"] == 5 and ca4_local["epochs"] == 3
    assert {k: v for k, v in ca4.items() if k != "epochs"} == {k: v for k, v in ca4_local.items() if k != "epochs"}
    baselines = check_config(load_config(LOCAL, ROOT / "config" / "baselines.yaml"), workdir=ROOT)
    assert set(baselines["run"]["defenses"]) > set(local["run"]["defenses"])
    assert baselines["defenses"]["ft"] == local["defenses"]["ft"]  # the local budgets, not the paper's


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


# -- one complete paper config, overlays layered on it ------------------------------------------
#: the named entries the local default adds beside the paper config's (its dataset, its model and
#: PQBackdoor's per-channel half as an attack of its own); anything else it states must override
LOCAL_ONLY_ENTRIES = {
    "data.sources.fashion_mnist",
    "archs.resnet_tiny",
    "clean.fashion_mnist",
    "attacks.pqbackdoor_x86",
}


def test_local_overlay_only_overrides_the_paper_config():
    """Every key config/local.yaml states exists in the paper config as its jobs see it (entries
    completed with their methods' defaults), but for the few entries the local default adds."""
    import yaml

    local = yaml.safe_load(LOCAL.read_text())
    paper = load_config(PAPER)
    missing, added = [], set()

    def walk(lo, pa, path):
        for k, v in lo.items():
            key = ".".join([*path, str(k)])
            if not isinstance(pa, dict) or k not in pa:
                if key in LOCAL_ONLY_ENTRIES:
                    added.add(key)
                else:
                    missing.append(key)
            elif isinstance(v, dict) and isinstance(pa[k], dict) and k != "trigger":
                walk(v, pa[k], [*path, str(k)])

    walk(local, paper, [])
    assert missing == [] and added == LOCAL_ONLY_ENTRIES
    # the added entries are complete on their own: their keys are their methods' (checked as any)
    check_config(load_config(), workdir=ROOT)


def test_loading_order_paper_then_local_or_the_given_files(tmp_path):
    import yaml
    from qcbench.config import update

    paper, local = (yaml.safe_load(p.read_text()) for p in (PAPER, LOCAL))
    assert load_config(resolve=False) == update(copy.deepcopy(paper), local)
    extra = tmp_path / "x.yaml"
    extra.write_text("run: {seeds: [7]}\n")
    assert load_config(extra, resolve=False) == update(copy.deepcopy(paper), {"run": {"seeds": [7]}})
    layered = load_config(LOCAL, extra)
    assert layered["run"]["seeds"] == [7] and layered["run"]["datasets"] == ["fashion_mnist"]
    # the paper config alone: its own entries, completed with the methods' defaults
    alone = load_config(PAPER)
    assert alone["run"]["datasets"] == ["cifar10"] and alone["defenses"]["lac"]["iterations"] == 10000
    assert "fashion_mnist" not in alone["data"]["sources"]


def test_snakefile_layers_local_only_without_configfiles(tmp_path):
    """The Snakefile: config/config.yaml, then config/local.yaml when no --configfile is given;
    any --configfile is layered on the paper config instead of the local file."""
    target = "results/fashion_mnist/resnet_tiny/clean/w32/none/seed0/model.safetensors"

    def dry(*configs):
        cmd = [sys.executable, "-m", "snakemake", "-n", target, "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(tmp_path)]  # fmt: skip
        if configs:
            cmd += ["--configfile", *map(str, configs)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)

    assert dry().returncode == 0  # the local default: Fashion-MNIST is a source
    assert dry(LOCAL).returncode == 0
    paper = dry(PAPER)  # the paper config alone knows no Fashion-MNIST
    assert paper.returncode != 0 and "train_clean" not in paper.stdout


def test_check_config_cli_loads_in_the_same_order(tmp_path, capsys):
    from qcbench.cli import main

    assert main(["check-config", "--workdir", str(ROOT)]) == 0  # the local default
    assert main(["check-config", "--workdir", str(ROOT), str(PAPER)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  seeds: [0, 1\neval: {}\n")
    capsys.readouterr()
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "YAML syntax error" in err and "Traceback" not in err
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert "absent.yaml" in err and "Traceback" not in err
    typo = tmp_path / "typo.yaml"
    typo.write_text("eval: {backends: [torch_x68]}\n")
    assert main(["check-config", str(typo)]) == 2
    assert "config key 'eval.backends.0': unknown backend 'torch_x68'" in capsys.readouterr().err


# -- method defaults on the method: contract tests over the registries ---------------------------
def _attack_names():
    from qcbench.attacks import ATTACKS

    return ATTACKS.names()


def _defense_names():
    from qcbench.defenses import DEFENSES

    return DEFENSES.names()


@pytest.mark.parametrize("name", _attack_names())
def test_every_attack_builds_from_its_defaults(name):
    from qcbench.attacks import ATTACKS, create_attack

    cls = ATTACKS.get(name)
    attack = create_attack(name, {"target": 0, "trigger": {"name": "patch"}}, 32)
    defaults = cls.defaults_of()
    assert {k: attack.params[k] for k in defaults} == defaults
    assert cls.param_errors({}) == {}
    assert cls.accepted_keys() >= set(defaults) | {"target", "trigger"}
    # an entry states only what differs; nested mappings merge key by key
    if isinstance(defaults.get("optimizer"), dict):
        lr = create_attack(name, {"target": 0, "trigger": {"name": "patch"}, "optimizer": {"lr": 0.5}}, 32)
        assert lr.params["optimizer"] == {**defaults["optimizer"], "lr": 0.5}


@pytest.mark.parametrize("name", _defense_names())
def test_every_defense_builds_from_its_defaults(name):
    from qcbench.defenses import create_defense
    from qcbench.defenses.base import defaults_of

    defense = create_defense(name, {})
    assert {k: defense.params.get(k, v) for k, v in defaults_of(name).items()} == defaults_of(name)


def test_paper_entries_are_their_methods_defaults():
    """The paper config states a defense by its method alone where the paper ran the upstream
    setting: the resolved entry is the constructor's defaults. (The mitigation baselines state
    the LAC paper's Appendix B settings instead: test_baselines checks those entries.)"""
    from qcbench.defenses.base import defaults_of

    paper = load_config(PAPER)
    for name in ("lac", "efrap"):
        entry = paper["defenses"][name]
        assert {k: v for k, v in entry.items() if k != "method"} == defaults_of(entry["method"]), name


def test_schema_and_registries_agree_and_config_readme_documents_every_key():
    """Every schema key and attack key is in config/README.md (a defense's keys are documented on
    its class, see test_contracts)."""
    import yaml
    from qcbench.attacks import ATTACKS
    from qcbench.config import SCHEMA
    from qcbench.defenses.base import defaults_of

    schema = yaml.safe_load(SCHEMA.read_text())
    attack_props = set(schema["properties"]["attacks"]["additionalProperties"]["properties"])
    registry = set().union(*(ATTACKS.get(n).accepted_keys() for n in ATTACKS.names()))
    assert attack_props == registry
    defense_props = set(schema["properties"]["defenses"]["additionalProperties"]["properties"])
    read = {"method", "scheme"} | {k for n in _defense_names() for k in defaults_of(n)}
    assert sorted(defense_props - read) == []  # every key the schema types is some defense's
    readme = (ROOT / "config" / "README.md").read_text()
    keys = set(registry)

    def walk(node):
        for k, v in (node.get("properties") or {}).items():
            keys.add(k)
            if isinstance(v, dict):
                walk(v)
                if isinstance(v.get("additionalProperties"), dict):
                    walk(v["additionalProperties"])

    walk(schema)
    assert sorted(k for k in keys if f"`{k}`" not in readme) == []


@pytest.mark.parametrize("overlay", ["academic", "baselines", "runtimes", "table3-local", "wide"])
def test_every_overlay_of_the_local_default_is_valid_on_top_of_it(overlay):
    """An overlay layered after config/local.yaml stays valid as the local default changes (a
    restriction there, e.g. run.defense_cells naming its attacks, must not strand an overlay's)."""
    check_config(load_config(LOCAL, ROOT / "config" / f"{overlay}.yaml"), workdir=ROOT)
