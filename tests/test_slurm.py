"""The tiny DAG (one seed) through a real single-node SLURM cluster on localhost, with the
slurm-local profile.

Installs nothing: needs the Debian packages slurmctld, slurmd, slurm-client and munge
(`make setup`), else it is skipped. Starts munged, slurmctld and slurmd with
tests/slurm/cluster.sh unless they already run, and stops only the daemons it started.
"""

import getpass
import os
import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest

from .conftest import REAL_PATH, ROOT, snakemake_cmd, write_idx

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
PROFILE = ROOT / "workflow" / "profiles" / "slurm-local"
# the whole run; a status-polling hang must not eat the CI budget (330 s timed out once while
# the 2 cores also ran two training jobs)
TIMEOUT_S = 900
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+)")
SLURM_RULES = {"prepare_data", "train_clean", "attack", "quantize", "defend", "evaluate"}


def _sh(*cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_real_env())


def _real_env():
    """The environment with SLURM's real tools (conftest stubs `scontrol` for the other tests)."""
    return {**os.environ, "PATH": REAL_PATH}


def _cluster_idle() -> bool:
    try:
        out = _sh("sinfo", "-h", "-o", "%T", timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and any(s in ("idle", "mixed", "allocated") for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm_cluster(request):
    """A running local cluster: the one already up, or one this fixture starts (and stops)."""
    daemons = [
        shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin") for b in ("munged", "slurmctld", "slurmd")
    ]
    clients = [shutil.which(b) for b in ("sbatch", "squeue", "sinfo", "scancel")]
    if not all(daemons + clients):
        pytest.skip("SLURM is not installed: `make setup` installs slurmctld slurmd slurm-client munge")
    if _cluster_idle():
        return []
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster running, and starting munged/slurmctld/slurmd needs root")
    out = _sh(str(CLUSTER), "start", timeout=90)
    started = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("started ")]

    def stop():
        if "slurmctld" in started:  # our own controller: cancel what a failed run left behind
            _sh("scancel", f"--user={getpass.getuser()}", timeout=30)
        if started:
            _sh(str(CLUSTER), "stop", *reversed(started), timeout=90)

    request.addfinalizer(stop)
    assert out.returncode == 0, f"cluster.sh start failed:\n{out.stdout}\n{out.stderr}"
    return started


def _run_snakemake(workdir, *args):
    """snakemake in its own process group; on timeout SIGINT (it scancels its jobs), then SIGKILL."""
    cmd = snakemake_cmd(workdir, *args, "--profile", str(PROFILE), configs=[ROOT / "tests" / "slurm" / "config.yaml"])
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=_real_env(),
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"snakemake through SLURM did not finish in {TIMEOUT_S} s:\n{out[-4000:]}")
    return proc.returncode, out


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_dag")
    write_idx(work / "tiny_fmnist", n_train=800, n_test=300)
    t0 = time.monotonic()
    rc, out = _run_snakemake(work, "all")
    elapsed = time.monotonic() - t0
    (work / "snakemake.out").write_text(out)
    assert rc == 0, out[-4000:]
    print(f"\nsnakemake --profile slurm-local all: {elapsed:.0f} s")
    return work, out


def test_jobs_went_through_sbatch(slurm_run):
    work, out = slurm_run
    ids = SUBMITTED.findall(out)
    # prepare_data, then for the one seed: train_clean, attack, 2 quantize, 4 defend (lac, and
    # none_attacker: the cell in the attack's own quantizer beside the deployer's), 8 evaluate
    assert len(ids) == 1 + 1 + 1 + 2 + 4 + 8, out[-3000:]
    queue = _sh("squeue", "--states=all", "--noheader", "--format=%i|%T|%k").stdout
    states = {i: (state, comment) for i, state, comment in (line.split("|", 2) for line in queue.split())}
    jobcomp = ""
    if os.access("/var/log/slurm/jobcomp.log", os.R_OK):
        jobcomp = open("/var/log/slurm/jobcomp.log").read()
    for jobid in ids:
        # squeue keeps finished jobs for MinJobAge (300 s); jobcomp.log keeps them for good
        if jobid in states:
            assert states[jobid][0] == "COMPLETED", (jobid, states[jobid])
        else:
            assert re.search(rf"JobId={jobid} .*JobState=COMPLETED", jobcomp), f"SLURM job {jobid} not found"
    # the job comment is rule_<rule>_wildcards_…; collate, table and report are localrules, never queued
    rules = {re.sub(r"^rule_|_wildcards_.*$", "", states[i][1]) for i in ids if i in states}
    assert rules == SLURM_RULES
    logs = {p.stem for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(ids) <= logs


def test_metrics_parquet_from_slurm(slurm_run):
    work, _ = slurm_run
    df = pd.read_parquet(work / "results" / "metrics.parquet")
    # clean, attacked FP, (none, lac, none_attacker) x (8, 4)
    assert len(df) == 2 + 3 * 2 and set(df.seed) == {0}
    assert (work / "results" / "tables" / "table1.md").is_file()
