#!/usr/bin/env bash
# Build container/qcbench.sif, the image the rules' `container:` directives name.
#   container/build.sh          apptainer (or singularity) build from container/qcbench.def
#   container/build.sh docker   docker build from container/Dockerfile, then convert to .sif
# Needs network access to PyPI and Docker Hub (python:3.11.7-slim-bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
builder=$(command -v apptainer || command -v singularity || true)
case "${1:-apptainer}" in
  apptainer)
    [ -n "$builder" ] || { echo "apptainer/singularity not found" >&2; exit 1; }
    "$builder" build --force container/qcbench.sif container/qcbench.def ;;
  docker)
    docker build -f container/Dockerfile -t "qcbench:$version" .
    [ -n "$builder" ] || { echo "built qcbench:$version; no apptainer to convert it to .sif" >&2; exit 0; }
    "$builder" build --force container/qcbench.sif "docker-daemon://qcbench:$version" ;;
  *) sed -n '2,5p' "$0" >&2; exit 2 ;;
esac
echo "container/qcbench.sif built"
