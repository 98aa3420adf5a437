"""Container recipes, lockfile and profiles agree, checked without running a container
(no apptainer or docker engine here): spython parses container/qcbench.def and container/Dockerfile."""

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from spython.main.parse.parsers import DockerParser, SingularityParser

from .conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")
PIN_IN_TEXT = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s;'\"]*)")
LOCK = "envs/requirements.lock"
IMAGE = "container/qcbench.sif"
GPU_RULES = ("train_clean", "attack", "defend", "defend_fp", "detect", "lac_curve")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}: not an exact pin: {raw!r}"
        pins[norm(m.group(1))] = m.group(3)
    return pins


@pytest.fixture(scope="module")
def lock():
    return read_pins(ROOT / LOCK)


@pytest.fixture(scope="module")
def apptainer():
    return SingularityParser(str(ROOT / "container" / "qcbench.def")).recipe["spython-base"]


@pytest.fixture(scope="module")
def docker():
    return DockerParser(str(ROOT / "container" / "Dockerfile")).recipe["spython-base"]


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())


def test_lock_is_complete_and_agrees_with_requirements(lock):
    assert "qcbench" not in lock, "the lockfile must not pin qcbench itself"
    assert {"torch", "snakemake", "snakemake-executor-plugin-slurm", "spython"} <= set(lock)
    top = read_pins(ROOT / "envs" / "requirements.txt")
    assert top, "envs/requirements.txt has no == pins"
    for name, version in top.items():
        assert lock.get(name) == version, f"{name}=={version} in requirements.txt, {lock.get(name)} in {LOCK}"


def test_lock_matches_the_installed_environment(lock):
    """The lock was frozen from this environment (make setup installs with `-c envs/requirements.lock`)."""
    wrong = {}
    for name, version in lock.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"lock vs installed: {wrong}; regenerate with `.venv/bin/pip freeze --exclude-editable`"


def test_conda_env_installs_the_lock():
    env = yaml.safe_load((ROOT / "envs" / "qcbench.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r requirements.lock"]
    assert f"python={sys.version_info.major}.{sys.version_info.minor}" in env["dependencies"]


def _installs_lock_and_package(commands: list[str]) -> None:
    text = "\n".join(commands)
    assert re.search(r"pip install (-\S+ )*-r \S*envs/requirements\.lock", text), text
    assert re.search(r"pip install (-\S+ )*--no-deps (\.|/opt/qcbench)(\s|$)", text), text


def _pins_agree(commands: list[str], lock: dict[str, str]) -> None:
    for name, version in PIN_IN_TEXT.findall("\n".join(commands)):
        assert lock.get(norm(name)) == version, f"recipe pins {name}=={version}, lock has {lock.get(norm(name))}"


def test_apptainer_recipe(apptainer, lock):
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.fullmatch(rf"python:{re.escape(py)}\.\d+-slim-\w+", apptainer.fromHeader), apptainer.fromHeader
    files = {src: dst for src, dst in (f.split() for f in apptainer.files)}
    assert files[LOCK].endswith(LOCK) and "workflow/src" in files and "pyproject.toml" in files
    _installs_lock_and_package(apptainer.install)
    _pins_agree(apptainer.install, lock)


def test_dockerfile(docker, apptainer, lock):
    assert docker.fromHeader == apptainer.fromHeader, "Dockerfile and .def must start from the same base image"
    assert [LOCK, LOCK] in docker.files and ["workflow/src", "workflow/src"] in docker.files
    _installs_lock_and_package([c for c in docker.install if not c.startswith("#")])
    _pins_agree([c for c in docker.install if not c.startswith("#")], lock)
    assert docker.workdir == "/opt/qcbench" and docker.entrypoint == ["qcbench"]


def test_every_rule_names_the_image():
    rules = ROOT / "workflow" / "rules"
    text = "\n".join(p.read_text() for p in sorted(rules.glob("*.smk")))
    n_rules = len(re.findall(r"^rule \w+:", text, flags=re.M))
    containers = re.findall(r"^    container:\n        \"([^\"]+)\"", text, flags=re.M)
    assert n_rules and len(containers) == n_rules and set(containers) == {IMAGE}


def test_site_profile_passes_nv_and_keeps_site_settings():
    site = profile("slurm")
    assert site["executor"] == "slurm" and site["retries"] == 2
    assert "--nv" in site["apptainer-args"].split() and site["software-deployment-method"] == "apptainer"
    assert "slurm-status-command" not in site, "a site with accounting keeps the sacct default"
    assert {"slurm_partition", "slurm_account"} <= set(site["default-resources"])
    for rule in GPU_RULES:
        assert site["set-resources"][rule]["gpu"] == 1
        assert "attempt" in str(site["set-resources"][rule]["mem_mb"])
        assert "attempt" in str(site["set-resources"][rule]["runtime"])


def test_local_profile_polls_with_squeue_and_asks_for_no_gpu():
    local = profile("slurm-local")
    assert local["executor"] == "slurm" and local["slurm-status-command"] == "squeue"
    assert local["slurm-init-seconds-before-status-checks"] <= 10
    assert "apptainer-args" not in local and "software-deployment-method" not in local
    assert not any("gpu" in res for res in local["set-resources"].values()), "the test cluster has no GPU"


def test_gpu_requests_are_a_site_setting():
    """No rule declares a GPU (a CPU-only cluster would reject --gpus); the site profile asks for
    one for every rule that trains or optimises, and for no other rule."""
    rules = ROOT / "workflow" / "rules"
    for p in rules.rglob("*.smk"):
        assert not re.search(r"\bgpu\s*=", p.read_text()), f"GPU request in {p.relative_to(ROOT)}"
    site = profile("slurm")["set-resources"]
    assert {rule for rule, res in site.items() if res.get("gpu")} == set(GPU_RULES)


def test_site_settings_only_in_profiles():
    site_keys = re.compile(r"\b(slurm_\w+|constraint|gres|gpu_model|apptainer[\w-]*)\b")
    places = [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk"), *(ROOT / "config").glob("*.yaml")]
    for p in places:
        assert not site_keys.search(p.read_text()), f"site setting in {p.relative_to(ROOT)}"


def test_make_profiles_makes_the_bare_names_resolve(tmp_path):
    """`make setup` (its target `profiles`) links the profiles into Snakemake's user config dir, so
    that `snakemake --profile slurm` finds them; here into a scratch XDG_CONFIG_HOME."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    subprocess.run(["make", "-s", "-C", str(ROOT), "profiles"], env=env, check=True, timeout=60)
    names = ["local", "slurm", "slurm-local"]
    code = "from snakemake.cli import get_profile_dir as g\n" + "".join(f"print(g({n!r})[1])\n" for n in names)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = [Path(line) for line in out.stdout.split()]
    assert len(found) == len(names)
    for name, path in zip(names, found):
        assert path.parent == tmp_path / "snakemake" / name
        assert path.samefile(ROOT / "workflow" / "profiles" / name / "config.yaml")


def test_make_profiles_relinks_another_checkouts_profiles_and_says_so(tmp_path):
    """A second clone's `make setup` takes the names over from the first clone, loudly; a folder
    of the user's own is never replaced."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "home")}
    home = tmp_path / "home" / "snakemake"
    home.mkdir(parents=True)
    other = tmp_path / "first-clone" / "workflow" / "profiles" / "slurm"
    other.mkdir(parents=True)
    (home / "slurm").symlink_to(other)
    (home / "slurm-local").mkdir()  # a profile of the user's own

    def make_profiles():
        cmd = ["make", "-s", "-C", str(ROOT), "profiles"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)

    out = make_profiles()
    assert (home / "slurm").resolve() == (ROOT / "workflow" / "profiles" / "slurm").resolve()
    assert f"pointed at {other}; relinked" in out.stdout
    assert (home / "slurm-local").is_dir() and not (home / "slurm-local").is_symlink()
    assert "slurm-local is not a link; left alone" in out.stderr
    assert make_profiles().stdout == ""  # already this checkout's: nothing to say
