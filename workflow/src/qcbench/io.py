"""Model files (safetensors + JSON metadata, never pickles) and the Parquet metrics contract."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pandas costs ~0.5 s to import: only the jobs that write metrics load it
    import pandas as pd

PICKLE_HELP = (
    "qcbench never unpickles model files (unpickling can run arbitrary code). If you trust the file, "
    "convert it once in an isolated environment: `sd = torch.load(path, weights_only=True)`, then "
    "`safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')`."
)


class ModelFileError(ValueError):
    """A model file is not a readable safetensors file."""


def _looks_like_pickle(blob: bytes) -> bool:
    """Disassemble (never execute) the start of a file: does it parse as pickle opcodes?"""
    import io as _io
    import pickletools

    if blob[:1] == b"\x80":
        return True
    try:
        for i, (op, _arg, _pos) in enumerate(pickletools.genops(_io.BytesIO(blob))):
            if op.name == "STOP" or i > 50:
                return True
    except Exception:
        return False
    return False


def check_safetensors(path: str | Path) -> None:
    """Reject pickles, torch zip checkpoints and truncated/corrupted files *without* loading them."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:2] == b"PK":
            raise ModelFileError(f"{path}: a PyTorch zip checkpoint (contains a pickle). {PICKLE_HELP}")
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        header = f.read(n) if 0 < n <= size - 8 else b""
    meta = None
    if header[:1] == b"{":
        try:
            meta = json.loads(header)
        except ValueError:
            meta = None
    if meta is None:
        if _looks_like_pickle(path.read_bytes()[:4096]):
            raise ModelFileError(f"{path}: looks like a Python pickle. {PICKLE_HELP}")
        raise ModelFileError(f"{path}: corrupted or truncated safetensors file (unreadable header, {size} bytes)")
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ModelFileError(f"{path}: corrupted safetensors file (tensor data ends at {8 + n + end}, size {size})")


def _replace_atomic(tmp: Path, dst: Path) -> None:
    os.replace(tmp, dst)


def save_model(model: nn.Module, path: str | Path, meta: dict) -> None:
    """Write ``path`` (safetensors) and ``path.with_suffix('.json')`` (metadata), each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"qcbench": "1"})
    jtmp = path.with_name(path.stem + ".json.tmp")
    jtmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    _replace_atomic(jtmp, path.with_suffix(".json"))
    _replace_atomic(tmp, path)


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).with_suffix(".json").read_text())


def build_model(meta: dict) -> nn.Module:
    """Instantiate the (possibly quantized) architecture described by a model's metadata."""
    from qcbench.models import create_model
    from qcbench.quant import QuantScheme, quantize_model

    model = create_model(
        meta["arch"],
        meta["num_classes"],
        meta["in_channels"],
        meta["mean"],
        meta["std"],
        **{"image_size": meta.get("image_size"), **meta.get("arch_kwargs", {})},
    )
    if meta.get("scheme"):
        model = quantize_model(model, QuantScheme.from_dict(meta["scheme"]))
    return model


def load_state(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a safetensors state dict into ``model``; a shape mismatch names the tensor."""
    from safetensors.torch import load_file

    check_safetensors(path)
    state = load_file(str(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ModelFileError(f"{path}: tensors missing {missing[:5]} / unexpected {extra[:5]} for this architecture")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ModelFileError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    meta = read_meta(path)
    model = load_state(path, build_model(meta))
    return model.to(device).eval(), meta


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a Parquet file atomically (temporary file + rename): never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        df.to_parquet(tmp, index=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace_atomic(tmp, path)


KEY_COLUMNS = ["dataset", "arch", "attack", "bits", "defense", "seed", "backend"]
METRIC_COLUMNS = {
    "dataset": "object",
    "arch": "object",
    "attack": "object",
    "bits": "int64",
    "defense": "object",
    "seed": "int64",
    "backend": "object",
    "scheme": "object",
    "variant": "object",
    "ba": "float64",
    "asr": "float64",
    "asr_all": "float64",
    "wall_s": "float64",
    "n_test": "int64",
    "config_hash": "object",
    "git_commit": "object",
    "versions": "object",
}


# value checks beyond the dtype (pandera); string columns not listed here must merely be strings
PERCENT_COLUMNS = ("ba", "asr", "asr_all")
NULLABLE = {"asr", "asr_all", "wall_s"}  # clean models have no ASR; wall time may be unknown
NONEMPTY = ("dataset", "arch", "attack", "defense", "backend", "scheme", "config_hash", "git_commit")
BITS = (32, *range(2, 17))  # 32 = full precision, else a quantizer's bit width


class MetricsError(ValueError):
    """A metrics frame breaks the contract; the message names the file, column and value."""


def metrics_schema(collated: bool = False):
    """The pandera schema of a metrics frame, derived from :data:`METRIC_COLUMNS`: dtypes plus
    ranges (percentages in [0, 100], ``bits`` in {32, 2..16}, ``seed``/``n_test``/``wall_s`` >= 0,
    key strings non-empty). ``collated`` adds ``der`` (in [0, 100] or missing); the uniqueness of
    the key across files is checked by :func:`qcbench.stages.collate`, which knows the files."""
    import pandera.pandas as pa

    checks: dict[str, list] = {c: [pa.Check.in_range(0, 100)] for c in PERCENT_COLUMNS}
    checks |= {c: [pa.Check.str_length(min_value=1)] for c in NONEMPTY}
    checks["bits"] = [pa.Check.isin(BITS)]
    checks["seed"] = checks["n_test"] = checks["wall_s"] = [pa.Check.ge(0)]
    dtype = {"object": str}
    columns = {
        name: pa.Column(dtype.get(kind, kind), checks.get(name, []), nullable=name in NULLABLE)
        for name, kind in METRIC_COLUMNS.items()
    }
    if collated:
        columns["der"] = pa.Column("float64", pa.Check.in_range(0, 100), nullable=True)
    return pa.DataFrameSchema(columns, strict=False)


def check_metrics(df: pd.DataFrame, source: str, collated: bool = False) -> None:
    """Check one metrics frame against the contract (:func:`metrics_schema`); every problem is
    reported as ``source: column 'x' ... value v (row i)``."""
    import pandera.pandas as pa

    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise MetricsError(f"{source}: metrics file lacks columns {missing}")
    try:
        metrics_schema(collated).validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise MetricsError(f"{source}: " + "; ".join(_failures(err.failure_cases))) from None


def _failures(cases: pd.DataFrame, limit: int = 8) -> list[str]:
    import pandas as pd

    wrong_type = set(cases.column[cases.check.astype(str).str.startswith("dtype(")])
    # a column of the wrong dtype also fails its value checks (with a TypeError): report it once
    cases = cases[~cases.column.isin(wrong_type) | cases.check.astype(str).str.startswith("dtype(")]
    out = []
    for _, c in cases.head(limit).iterrows():
        row = "" if pd.isna(c["index"]) else f" (row {int(c['index'])})"
        if str(c["check"]).startswith("dtype("):
            want, got = c["check"][6:-1], c["failure_case"]
            out.append(f"column {c['column']!r} has the wrong dtype (expected {want}; got {got!r})")
        elif c["check"] == "not_nullable":
            out.append(f"column {c['column']!r} is missing a value{row}")
        else:
            out.append(f"column {c['column']!r} value {c['failure_case']!r} fails {c['check']}{row}")
    if len(cases) > limit:
        out.append(f"... {len(cases) - limit} more")
    return out
