"""Reviewer archive of a run: results/MANIFEST.sha256 plus one tar.gz with everything needed to
check and rerun it: the repository files its README refers to (Snakefile, workflow/ with the
library and its paper-reference numbers, config/, envs/ with the lockfile, container/, tests/,
docs/, .ci/, Makefile, pyproject.toml, README.md), all of results/ and the manifest.

    make archive                     # = qcbench archive --root .
    qcbench archive --root . --out /somewhere/qcbench-run.tar.gz

Not a pipeline stage: a command run on a finished run's checkout, standard library only. The
manifest lists the SHA-256 of every file under results/ except itself and results/archive/ (where
archives go by default), with paths relative to results/, in `sha256sum` format:
`cd results && sha256sum -c MANIFEST.sha256`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
ARCHIVE_DIR = "archive"  # results/archive/: default home of the archives, never archived itself
#: the repository files and folders archived beside results/ (resources/, the datasets, is not)
REPOSITORY_ITEMS = [
    "Snakefile",
    "workflow",
    "config",
    "envs",
    "container",
    "tests",
    "docs",
    ".ci",
    "Makefile",
    "pyproject.toml",
    "README.md",
]
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".snakemake"}
SKIP_SUFFIXES = (".pyc", ".sif", ".simg", ".egg-info")


class ArchiveError(RuntimeError):
    """Nothing to archive (no results folder)."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _result_files(results: Path, exclude: set[Path]) -> list[Path]:
    files = []
    for p in sorted(results.rglob("*")):
        rel = p.relative_to(results)
        if rel.parts[0] == ARCHIVE_DIR or rel == Path(MANIFEST) or p.resolve() in exclude:
            continue
        if p.is_file():
            files.append(p)
    return files


def write_manifest(root: Path, exclude: set[Path] = frozenset()) -> Path:
    """Write results/MANIFEST.sha256 (sorted, `sha256sum -c` compatible) and return its path."""
    results = root / "results"
    if not results.is_dir():
        raise ArchiveError(f"{results} does not exist; run the workflow first")
    lines = [f"{sha256(p)}  {p.relative_to(results).as_posix()}\n" for p in _result_files(results, exclude)]
    manifest = results / MANIFEST
    manifest.write_text("".join(lines))
    return manifest


def git_tag(root: Path) -> str:
    """Short commit (+ '-dirty' for uncommitted changes to tracked files), or 'nogit'."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if sha.returncode:
            return "nogit"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def _skip(path: Path) -> bool:
    return any(part in SKIP_NAMES or part.endswith(SKIP_SUFFIXES) for part in path.parts)


def _members(root: Path, out: Path) -> list[Path]:
    """Relative paths of every file that goes into the archive, sorted."""
    items = [*REPOSITORY_ITEMS, "results"]
    found: set[Path] = set()
    for item in items:
        p = root / item
        if p.is_file():
            found.add(Path(item))
        elif p.is_dir():
            for f in p.rglob("*"):
                rel = f.relative_to(root)
                if f.is_file() and not _skip(rel) and f.resolve() != out.resolve():
                    if rel.parts[0] == "results" and len(rel.parts) > 1 and rel.parts[1] == ARCHIVE_DIR:
                        continue
                    found.add(rel)
    return sorted(found)


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(root: Path, out: Path | None = None) -> Path:
    """Write the manifest, then the tar.gz; return the archive's path."""
    root = root.resolve()
    if not (root / "results").is_dir():
        raise ArchiveError(f"{root / 'results'} does not exist; run the workflow first")
    tag = git_tag(root)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    name = f"qcbench-{stamp}-{tag}"
    out = (out or root / "results" / ARCHIVE_DIR / f"{name}.tar.gz").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(root, exclude={out})
    results = root / "results"
    if not (results / "metrics.parquet").is_file():
        print("archive: warning: results/metrics.parquet is missing (an incomplete run?)", file=sys.stderr)
    info = (
        f"qcbench reviewer archive\ncommit: {tag}\ncreated: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n"
        f"check the results: cd results && sha256sum -c {MANIFEST}\n"
        "rerun: see README.md (make setup; snakemake --profile slurm all --configfile config/config.yaml)\n"
    ).encode()
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for rel in _members(root, out):
            tar.add(root / rel, arcname=f"{name}/{rel.as_posix()}", recursive=False, filter=_reset)
        ti = tarfile.TarInfo(f"{name}/ARCHIVE.txt")
        ti.size, ti.mtime, ti.mode = len(info), int(dt.datetime.now(dt.UTC).timestamp()), 0o644
        tar.addfile(ti, io.BytesIO(info))
    tmp.replace(out)
    return out
