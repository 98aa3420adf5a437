"""Provenance carried by every metrics row: config hash, git commit, package versions."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path


def config_hash(cfg: dict) -> str:
    """A short, order-independent hash of a (resolved) configuration."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _git(args: list[str], cwd) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@cache
def git_commit() -> str:
    """The workflow's commit (+ ``-dirty``): ``$QCBENCH_GIT_COMMIT`` if set (containers, archives),
    else the git checkout of the working directory (Snakemake runs jobs from the workflow root),
    else that of the installed package; ``unknown`` outside any checkout."""
    if os.environ.get("QCBENCH_GIT_COMMIT"):
        return os.environ["QCBENCH_GIT_COMMIT"]
    for cwd in (Path.cwd(), Path(__file__).resolve().parent):
        sha = _git(["rev-parse", "HEAD"], cwd)
        if sha:
            dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
            return sha + ("-dirty" if dirty else "")
    return "unknown"


@cache
def versions() -> str:
    pkgs = {"python": platform.python_version()}
    for name in ("qcbench", "torch", "torchvision", "safetensors", "snakemake", "pandas"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = "absent"
    return json.dumps(pkgs, sort_keys=True)
