"""Data files shipped inside the qcbench package and read at run time, so that an installed
package works without the repository: the config schema and the paper's reported numbers
(``reference/paper-reference.md`` documents the CSV)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# a folder on disk: pip installs qcbench unpacked, editable or not
_PACKAGE = files("qcbench")
#: the JSON schema (draft 2020-12, in YAML) every config is validated against
CONFIG_SCHEMA: Path = _PACKAGE / "schemas" / "config.schema.yaml"
#: the LAC/PDA paper's reported numbers, one row per number, joined into the rendered tables
PAPER_REFERENCE: Path = _PACKAGE / "reference" / "paper-reference.csv"
