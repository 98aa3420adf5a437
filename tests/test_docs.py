"""Every shell command documented in README.md and docs/*.md runs.

Convention: a fenced block tagged ``sh`` holds commands, one per line (``\\`` continues a line,
``#`` starts a comment); a block tagged ``text`` (or a data language: yaml, json, python) is
output, paths or code, never run. An untagged fence is an error, so no block is ambiguous.

Each command is run in a safe form, from the repository root: ``snakemake`` as a dry-run (``-n``)
that must plan the documented targets, ``make`` as ``make -n``, ``qcbench`` and
``python -m tests.benchmarks`` as ``--help`` that must list every option the command uses,
``container/build.sh`` as a syntax check of the script with its documented mode. A command of any
other kind fails the test until it gets a safe form here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DATA_LANGS = {"text", "yaml", "json", "python"}
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)

# Snakemake options by arity (argparse: nargs="+" / "*" take every following non-option word).
MULTI = {"--configfile", "--configfiles", "--forcerun", "-R", "--sdm", "--software-deployment-method",
         "--config", "-C", "--default-resources", "--set-resources", "--until", "-U", "--omit-from", "-O",
         "--set-threads", "--list-changes", "--lc"}  # fmt: skip
SINGLE = {"--cores", "-c", "--jobs", "-j", "--profile", "--directory", "-d", "--snakefile", "-s"}
DRY = {"-n", "--dry-run", "--dryrun"}
NO_PLAN = {"--unlock", "--list-changes", "--lc", "--version", "--help", "-h"}


def commands() -> list[tuple[str, str]]:
    """(``file:line``, command) for every command of every ``sh`` block."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            lang, body = m.group(1), m.group(2)
            line0 = text.count("\n", 0, m.start()) + 2
            assert lang, f"{doc.name}:{line0 - 1}: a fenced block needs a language (sh for commands, text otherwise)"
            assert lang == "sh" or lang in DATA_LANGS, f"{doc.name}:{line0 - 1}: unknown block language {lang!r}"
            if lang != "sh":
                continue
            joined = body.replace("\\\n", " ")
            start = line0
            for i, line in enumerate(joined.splitlines()):
                words = shlex.split(line, comments=True)
                if words:
                    out.append((f"{doc.relative_to(ROOT)}:{start + i}", shlex.join(words)))
    return out


COMMANDS = commands()


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def split_snakemake(words: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Targets and options of a snakemake command line, as snakemake's argparse reads them."""
    targets, opts, i = [], {}, 0
    while i < len(words):
        w = words[i]
        if w == "--":
            targets += words[i + 1 :]
            break
        if w in MULTI:
            j = i + 1
            while j < len(words) and not words[j].startswith("-"):
                j += 1
            opts[w] = words[i + 1 : j]
            i = j
        elif w in SINGLE:
            opts[w] = words[i + 1 : i + 2]
            i += 2
        elif w.startswith("-"):
            opts[w] = []
            i += 1
        else:
            targets.append(w)
            i += 1
    return targets, opts


def check_snakemake(words: list[str], tmp_path: Path) -> None:
    targets, opts = split_snakemake(words)
    argv = list(words)
    profile = opts.get("--profile", [None])[0]
    if profile and "/" not in profile:  # `make setup` links the name; the test uses the folder
        argv[argv.index("--profile") + 1] = str(ROOT / "workflow" / "profiles" / profile)
    for tool in ("apptainer", "conda"):
        sdm = opts.get("--sdm", [])
        needs = tool in sdm or (tool == "apptainer" and profile == "slurm" and not sdm)
        if needs and not shutil.which(tool):  # plan without the missing tool, all else the same
            if sdm:
                k = argv.index("--sdm")
                del argv[k : k + 1 + len(sdm)]
            argv += ["--sdm", "env-modules"]
    if "--unlock" in opts:  # never unlock the checkout itself: a run may hold its lock
        argv += ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    elif not DRY & set(opts):
        argv.insert(0, "-n")
    r = run([sys.executable, "-m", "snakemake", *argv])
    assert r.returncode == 0, f"snakemake {shlex.join(argv)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if NO_PLAN & set(opts):
        return
    assert targets, f"no target left: an option swallowed it ({shlex.join(words)})"
    out = r.stdout + r.stderr
    for t in targets:
        if "/" in t or "." in t:
            assert t in out or "Nothing to be done" in out, f"the dry-run does not plan {t}"
        else:
            assert re.search(rf"^\s*(local)?rule {re.escape(t)}:|^{re.escape(t)}\s+\d+\s*$", out, re.M), (
                f"the dry-run does not plan the rule {t}"
            )


def check_help(argv: list[str], words: list[str]) -> None:
    r = run([*argv, "--help"])
    assert r.returncode == 0, f"{shlex.join(argv)} --help failed:\n{r.stderr[-2000:]}"
    missing = [w for w in words if w.startswith("--") and w.split("=")[0] not in r.stdout]
    assert not missing, f"{shlex.join(argv)} has no option {missing}"


def check_make(words: list[str]) -> None:
    r = run(["make", "-n", *words[1:]])
    assert r.returncode == 0, f"make -n {shlex.join(words[1:])} failed:\n{r.stderr[-2000:]}"


def check_build_script(words: list[str]) -> None:
    script = ROOT / words[0]
    assert run(["bash", "-n", str(script)]).returncode == 0, f"{words[0]} does not parse"
    for mode in words[1:]:
        assert re.search(rf"^\s*{re.escape(mode)}\)", script.read_text(), re.M), f"{words[0]} has no mode {mode}"


@pytest.mark.slow
@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_runs(where, command, tmp_path):
    words = shlex.split(command)
    head = words[0]
    venv_bin = Path(sys.executable).parent
    if head == "snakemake":
        check_snakemake(words[1:], tmp_path)
    elif head == "make":
        check_make(words)
    elif head == "qcbench":
        check_help([str(venv_bin / "qcbench"), words[1]], words[2:])
    elif words[:3] == ["python", "-m", "tests.benchmarks"]:
        check_help([sys.executable, "-m", "tests.benchmarks"], words[3:])
    elif head == "container/build.sh":
        check_build_script(words)
    else:
        pytest.fail(f"{where}: no safe form for {command!r}; add one to tests/test_docs.py")


def test_docs_have_commands_and_no_ambiguous_blocks():
    """Parsing succeeds (every fence tagged) and finds the README's two main commands."""
    found = {c for _, c in COMMANDS}
    assert {"make run", "make test"} <= found
    assert any(c.startswith("snakemake --profile slurm all") for c in found)


def test_swallowed_target_is_detected():
    targets, opts = split_snakemake(shlex.split("--cores 2 --configfile config/local.yaml all"))
    assert targets == [] and opts["--configfile"] == ["config/local.yaml", "all"]
    targets, _ = split_snakemake(shlex.split("-n --configfile config/config.yaml -- all"))
    assert targets == ["all"]


def _wrapper_env(tmp_path: Path, port: int) -> dict:
    """The scontrol wrapper first on PATH, a fake real scontrol behind it, a slurm.conf naming port."""
    import os

    (tmp_path / "wrap").mkdir()
    (tmp_path / "real").mkdir()
    shutil.copy(ROOT / "workflow" / "profiles" / "scontrol.sh", tmp_path / "wrap" / "scontrol")
    (tmp_path / "real" / "scontrol").write_text('#!/bin/sh\necho "real scontrol $*"\n')
    (tmp_path / "real" / "scontrol").chmod(0o755)
    (tmp_path / "slurm.conf").write_text(f"SlurmctldHost=node0(127.0.0.1)\nSlurmctldPort={port}\n")
    path = f"{tmp_path / 'wrap'}:{tmp_path / 'real'}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "SLURM_CONF": str(tmp_path / "slurm.conf")}


def test_scontrol_wrapper_fails_at_once_without_a_controller_and_passes_through_with_one(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = _wrapper_env(tmp_path, closed)
    t0 = time.monotonic()
    r = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "no SLURM controller listens" in r.stderr and time.monotonic() - t0 < 2
    r = subprocess.run(["scontrol", "--version"], env=env, capture_output=True, text=True)
    assert r.stdout.strip() == "real scontrol --version"  # needs no controller: passed through
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        (tmp_path / "up").mkdir()
        env = _wrapper_env(tmp_path / "up", server.getsockname()[1])
        r = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "real scontrol show config"
