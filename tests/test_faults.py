"""Faults: a run killed mid-way leaves nothing Snakemake accepts and a rerun completes only what is
missing; the same seed twice gives identical metrics on CPU."""

import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from qcbench import stages
from qcbench.config import load_config

from .conftest import ROOT, TINY_CONFIGS, snakemake_cmd, write_idx

pytestmark = pytest.mark.slow


def _snakemake(work, *args):
    one = work / "one-cell.yaml"  # a single 4-bit LAC cell, one seed
    one.write_text("run: {datasets: [fashion_mnist], archs: [resnet_tiny], attacks: [qu_anti_zation], bits: [4],"
                   " defenses: [lac], seeds: [0]}\neval: {batch_size: 200, backends: []}\n"
                   "attacks: {qu_anti_zation: {epochs: 30}}\n"  # long enough to be killed mid-way
                   "table6: null\ndetection: null\n")  # optional sections off  # fmt: skip
    return snakemake_cmd(work, "--cores", "1", *args, configs=[one])


def test_killed_run_leaves_nothing_half_written_and_rerun_completes_only_the_rest(tmp_path):
    write_idx(tmp_path / "tiny_fmnist", n_train=800, n_test=300)
    clean = tmp_path / "results/fashion_mnist/resnet_tiny/clean/w32/none/seed0/model.safetensors"
    attack_log = tmp_path / "results/logs/attack/fashion_mnist/resnet_tiny/qu_anti_zation/seed0.log"
    proc = subprocess.Popen(_snakemake(tmp_path, "all"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (attack_log.exists() and attack_log.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.5)
    assert attack_log.exists(), "the attack job never started"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, mid-attack
    proc.wait(timeout=30)
    attacked = tmp_path / "results/fashion_mnist/resnet_tiny/qu_anti_zation/w32/none/seed0/model.safetensors"
    assert clean.is_file() and not attacked.exists()  # atomic writes: the attack left no model
    assert not (tmp_path / "results" / "metrics.parquet").exists()
    clean_mtime = clean.stat().st_mtime_ns
    plan = subprocess.run(_snakemake(tmp_path, "all", "-n"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "train_clean" not in plan.stdout and "attack" in plan.stdout
    # a killed Snakemake leaves its lock behind: the documented recovery is --unlock, then rerun
    unlock = subprocess.run(_snakemake(tmp_path, "--unlock"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = subprocess.run(_snakemake(tmp_path, "all", "--rerun-incomplete"), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert clean.stat().st_mtime_ns == clean_mtime  # the finished clean model was not recomputed
    df = pd.read_parquet(tmp_path / "results" / "metrics.parquet")
    # clean FP, attacked FP, w4 none, w4 lac, and w4 none_attacker (the cell in the attack's own quantizer)
    assert set(df.defense) == {"none", "lac", "none_attacker"} and len(df) == 5


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    cfg = load_config(*TINY_CONFIGS)
    write_idx(tmp_path / "idx", n_train=400, n_test=200)
    cfg["data"]["sources"]["fashion_mnist"]["path"] = str(tmp_path / "idx")
    data = tmp_path / "data.safetensors"
    stages.prepare_data(cfg, "fashion_mnist", str(data))
    keys = {"dataset": "fashion_mnist", "arch": "resnet_tiny", "attack": "clean", "bits": 32, "defense": "none",
            "seed": 3}  # fmt: skip
    frames = []
    for run in ("a", "b"):
        model = tmp_path / run / "model.safetensors"
        stages.train_clean(cfg, "fashion_mnist", "resnet_tiny", 3, str(data), str(model))
        frames.append(stages.evaluate(cfg, str(model), str(data), str(tmp_path / run / "m.parquet"), keys))
        assert (tmp_path / run / "m.parquet").is_file()
    a, b = frames
    assert a[["ba", "asr", "asr_all"]].equals(b[["ba", "asr", "asr_all"]])
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_asking_for_an_unlisted_runtime_names_the_config_key(tmp_path):
    """A registered real int8 runtime that eval.backends does not list is refused when planning,
    with the key to change (not Snakemake's bare "No rule to produce")."""
    write_idx(tmp_path / "tiny_fmnist", n_train=200, n_test=100)
    target = "results/fashion_mnist/resnet_tiny/qu_anti_zation/w8/none/seed0/metrics.torch_x86_nofuse.parquet"
    out = subprocess.run(snakemake_cmd(tmp_path, "-n", target), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "config key 'eval.backends': 'torch_x86_nofuse' is not listed" in out.stdout + out.stderr
    listed = load_config(*TINY_CONFIGS)["eval"]["backends"][0]
    ok = subprocess.run(snakemake_cmd(tmp_path, "-n", target.replace("torch_x86_nofuse", listed)), cwd=ROOT,
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
