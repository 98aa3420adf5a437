"""Purify a received model: quantize a third-party FP checkpoint and run a layer-wise defense
(LAC + PDA or EFRAP) on a few hundred unlabeled images (``qcbench purify``).

Nothing here unpickles: checkpoints and tensor files must be safetensors (or ``.npy``/``.npz``
read with ``allow_pickle=False``); a pickle or torch zip checkpoint is refused with
:data:`qcbench.io.PICKLE_HELP`. The output folder holds ``model.safetensors`` + ``model.json``
(the JSON records the scheme and the exact quantizer the defense purified for: every weight
grid and activation range, :func:`qcbench.export.quantization_record`;
:func:`qcbench.export.load_purified` rebuilds the model from it bit for bit), ``summary.json``
(settings, wall times, the per-unit log, the deployment the result is safe for and, given labeled
data and a trigger or triggered images, BA/ASR of the FP, quantized and purified models) and, with
``export="onnx"``, ``model.onnx`` (:func:`qcbench.export.export_qdq_onnx`).

Every input is checked before any quantization or optimisation (:func:`check_inputs`), each
refusal a :class:`PurifyError` naming the flag and value. The defense stops at the first layer
unit whose loss is not finite, a purified model with a NaN or infinite tensor is refused, and
the output folder is written beside ``--out`` and renamed into place once complete, so a failed
run leaves no ``--out``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qcbench import io, provenance
from qcbench.data import ImageSet, sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
IMAGE_KEYS = ("x", "images", "test_x", "train_x")

# CPU-sized defaults (the papers use 10,000 iterations per unit and 500 PDA steps).
CPU_DEFAULTS = {
    "lac": {"iterations": 300, "batch_size": 32, "pda": True, "pda_iterations": 20},
    "efrap": {"iterations": 300, "batch_size": 32},
}


class PurifyError(ValueError):
    """Bad inputs to :func:`purify`; the message says which and why."""


# -- images ------------------------------------------------------------------------------------
def _to_uint8_nchw(x: torch.Tensor, source: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise PurifyError(f"{source}: images must be (N, C, H, W) (or (N, H, W)); got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise PurifyError(f"{source}: images must be uint8 or float, got {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise PurifyError(f"{source}: images hold NaN or infinite values")
    if x.numel() and float(x.max()) <= 1.0:
        x = x * 255.0  # floats in [0, 1]
    return x.round().clamp(0, 255).to(torch.uint8).contiguous()


def _pick(tensors: dict, keys: tuple[str, ...], source: str, what: str) -> torch.Tensor:
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    for k in keys:
        if k in tensors:
            return tensors[k]
    names = sorted(tensors)
    shown = ", ".join(names[:6]) + (f", … ({len(names)} tensors)" if len(names) > 6 else "")
    raise PurifyError(f"{source}: no {what} tensor (expected one of {list(keys)}; the file has {shown})")


def read_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file (checked first: pickles are refused unread) or ``.npy``/``.npz``."""
    path = Path(path)
    if path.suffix in (".npy", ".npz"):
        import numpy as np

        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as err:  # object arrays need pickle
            raise io.ModelFileError(f"{path}: needs unpickling ({err}). {io.PICKLE_HELP}") from err
        if path.suffix == ".npy":
            return {"x": torch.from_numpy(data)}
        return {k: torch.from_numpy(data[k]) for k in data.files}
    from safetensors.torch import load_file

    io.check_safetensors(path)
    return load_file(str(path))


def _decode(path: Path, channels: int | None) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = {None: ImageReadMode.UNCHANGED, 1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(channels)
    if mode is None:
        raise PurifyError(f"{path}: image files give 1 or 3 channels, the model wants {channels}")
    try:
        img = decode_image(read_file(str(path)), mode=mode)
    except RuntimeError:  # a format torchvision cannot decode: PIL
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as im:
                pil = im.convert("L" if channels == 1 else "RGB") if channels else im
                img = torch.from_numpy(np.array(pil))
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable files
            raise PurifyError(f"{path}: not a decodable image ({err})") from None
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
    if channels is None:  # drop alpha
        img = img[:1] if img.shape[0] in (1, 2) else img[:3]
    return img


def load_images(path: str | Path, channels: int | None = None, limit: int | None = None) -> torch.Tensor:
    """uint8 images (N, C, H, W) from a folder of image files (sorted by name) or a tensor file
    (uint8 or float, NCHW/NHW/NHWC; float in [0, 1] or [0, 255])."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PurifyError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        files = files[:limit] if limit else files
        first = _decode(files[0], channels)
        channels = first.shape[0]
        imgs = [first]
        for f in files[1:]:
            img = _decode(f, channels)
            if img.shape != first.shape:
                shapes = f"{tuple(img.shape)} differs from {files[0].name}'s {tuple(first.shape)}"
                raise PurifyError(f"{f}: image size {shapes} (resize the images to one size first)")
            imgs.append(img)
        x = torch.stack(imgs)
    elif path.is_file():
        x = _to_uint8_nchw(_pick(read_tensor_file(path), IMAGE_KEYS, str(path), "image"), str(path))
        x = x[:limit] if limit else x
    else:
        raise PurifyError(f"{path}: no such image folder or tensor file")
    if channels is not None and x.shape[1] != channels:
        raise PurifyError(f"{path}: images have {x.shape[1]} channels, the model expects {channels}")
    if len(x) == 0:
        raise PurifyError(f"{path}: no images")
    return x


LABEL_FILES = ("labels.txt", "labels.json")


def _folder_labels(path: Path) -> torch.Tensor:
    """The labels of an image folder: ``labels.txt`` (one integer per line) or ``labels.json`` (a
    list), in the order of the sorted image file names."""
    for name in LABEL_FILES:
        f = path / name
        if f.is_file():
            text = f.read_text()
            try:
                vals = json.loads(text) if name.endswith(".json") else [int(v) for v in text.split()]
            except ValueError as err:
                raise PurifyError(f"{f}: not a list of integer labels ({err})") from None
            if not isinstance(vals, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                raise PurifyError(f"{f}: labels must be a list of integers")
            return torch.tensor(vals, dtype=torch.long)
    raise PurifyError(f"{path}: an image folder needs its labels in {' or '.join(LABEL_FILES)} (sorted file order)")


def load_labeled(path: str | Path, num_classes: int | None = None, channels: int | None = None) -> ImageSet:
    """Labeled evaluation images: a prepared dataset (its test split), a tensor file with ``x``
    and ``y``, or a folder of image files with ``labels.txt``/``labels.json`` (integer labels, in
    ``[0, num_classes)`` when ``num_classes`` is given)."""
    path = Path(path)
    if path.is_dir():
        x, y = load_images(path, channels), _folder_labels(path)
        if len(x) != len(y):
            raise PurifyError(f"{path}: {len(x)} images but {len(y)} labels")
        t = {"x": x, "y": y}
    elif not path.exists():
        raise PurifyError(f"{path}: no such file or folder")
    else:
        t = read_tensor_file(path)
    if "test_x" in t and "test_y" in t:
        x, y = t["test_x"], t["test_y"]
    elif "x" in t and "y" in t:
        x, y = t["x"], t["y"]
    else:
        raise PurifyError(f"{path}: labeled data needs tensors 'x' and 'y' (or a prepared dataset); got {sorted(t)}")
    x = _to_uint8_nchw(x, str(path))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise PurifyError(f"{path}: labels must be integers, got {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise PurifyError(f"{path}: labels must be one per image (shape (N,)), got shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise PurifyError(f"{path}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise PurifyError(f"{path}: no labeled images")
    if channels is not None and x.shape[1] != channels:
        raise PurifyError(f"{path}: images have {x.shape[1]} channels, the model expects {channels}")
    y = y.long()
    if num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise PurifyError(f"{path}: label {bad} outside [0, {num_classes}) for a {num_classes}-class model")
    return ImageSet(x, y)


# -- the model ---------------------------------------------------------------------------------
def _normalizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from qcbench.models.layers import Normalize

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Normalize)]


def check_normalization(mean, std, channels: int | None = None, where: str = "--{}") -> None:
    """``mean``/``std`` (either may be None): finite numbers, std > 0, one per input channel (or
    one for all); ``where`` formats the name of what gave them (``"--{}"``: the flags)."""
    for name, val in (("mean", mean), ("std", std)):
        if val is None:
            continue
        what = where.format(name)
        if not isinstance(val, list | tuple) or not val:
            raise PurifyError(f"{what} {val!r}: give one number per input channel (or one for all)")
        for v in val:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise PurifyError(f"{what} {' '.join(map(str, val))}: {v!r} is not a finite number")
            if name == "std" and v <= 0:
                raise PurifyError(f"{what} {' '.join(map(str, val))}: {v} is not > 0 (a std divides the input)")
        if channels is not None and len(val) not in (1, channels):
            raise PurifyError(f"{what} has {len(val)} values for {channels} input channels (give {channels}, or 1)")


def sidecar_meta(path: str | Path) -> dict:
    """The qcbench ``model.json`` beside a checkpoint, or ``{}`` (none, or not a qcbench one)."""
    path = Path(path)
    jpath = path.with_suffix(".json")
    if not jpath.is_file():
        return {}
    try:
        meta = json.loads(jpath.read_text())
    except ValueError as err:
        raise PurifyError(f"{jpath}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or "arch" not in meta:
        return {}
    if meta.get("scheme"):
        raise PurifyError(f"{path}: a quantized qcbench model ({jpath}); purify takes the full-precision model")
    return meta


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    arch_kwargs: dict | None = None,
) -> tuple[nn.Module, dict]:
    """Build ``arch`` and load an FP safetensors checkpoint into it. Settings not given are read
    from a qcbench ``model.json`` beside the checkpoint when there is one. A checkpoint without the
    model's normalization buffers takes them from ``mean``/``std``; explicit ``mean``/``std``
    override the checkpoint's."""
    from safetensors import safe_open

    from qcbench.models import MODELS, create_model

    path = Path(path)
    io.check_safetensors(path)  # refuses pickles / torch zips before anything else
    meta = sidecar_meta(path)
    arch = arch or meta.get("arch")
    num_classes = num_classes or meta.get("num_classes")
    in_channels = in_channels or meta.get("in_channels")
    arch_kwargs = meta.get("arch_kwargs", {}) if arch_kwargs is None else arch_kwargs
    if arch is None:
        raise PurifyError(f"{path}: no model.json beside it; pass --arch (registered: {MODELS.names()})")
    if arch not in MODELS:
        raise PurifyError(f"unknown arch {arch!r}; registered: {MODELS.names()}")
    if num_classes is None or in_channels is None:
        raise PurifyError(f"{path}: pass --num-classes (and --in-channels); no model.json beside it")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    src_mean, src_std = (mean, std) if mean is not None else (meta.get("mean"), meta.get("std"))
    source = "cli" if mean is not None else "json" if src_mean is not None else "checkpoint"
    if src_mean is None or src_std is None:
        src_mean, src_std = [0.0] * in_channels, [1.0] * in_channels
    where = {"cli": "--{}", "json": f"{path.with_suffix('.json')}: {{}}"}.get(source, "{}")
    check_normalization(src_mean, src_std, in_channels, where)
    src_mean = list(src_mean) * (in_channels // len(src_mean))
    src_std = list(src_std) * (in_channels // len(src_std))
    try:
        model = create_model(arch, num_classes, in_channels, src_mean, src_std, **arch_kwargs)
    except TypeError as err:
        raise PurifyError(f"arch {arch!r} with {arch_kwargs}: {err}") from err
    norms = _normalizers(model)
    absent = [(n, m) for n, m in norms if not {f"{n}.mean", f"{n}.std"} <= keys]
    if absent and source == "checkpoint":
        raise PurifyError(f"{path}: the checkpoint has no normalization buffers; pass --mean and --std")
    for _, m in absent:  # not in the file: not expected from it either
        m._non_persistent_buffers_set.update({"mean", "std"})
    try:
        own = {k: v.clone() for n, m in norms for k, v in ((f"{n}.mean", m.mean), (f"{n}.std", m.std))}
        io.load_state(path, model)
    finally:
        for _, m in absent:
            m._non_persistent_buffers_set.difference_update({"mean", "std"})
    sd = model.state_dict()
    if source in ("cli", "json"):  # explicit normalization wins over the checkpoint's
        for k, v in own.items():
            if not torch.equal(sd[k], v):
                print(f"purify: {k} from the {source} overrides the checkpoint's", file=sys.stderr)
                sd[k].copy_(v)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise PurifyError(f"{path}: tensor {bad[0]!r}{more} holds NaN or infinite values")
    for n, m in norms:
        if not bool((m.std > 0).all()):
            raise PurifyError(f"{path}: normalization std {n}.std is not > 0 ({m.std.flatten().tolist()}); pass --std")
    norm = norms[0][1] if norms else None
    meta = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "mean": norm.mean.flatten().tolist() if norm is not None else src_mean,
        "std": norm.std.flatten().tolist() if norm is not None else src_std,
        "normalization_source": source,
    }
    return model.eval(), meta


def _clean(obj):
    """JSON-safe: NaN/inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=True, default=str, allow_nan=False))
    os.replace(tmp, path)


# -- checking the inputs ----------------------------------------------------------------------
#: the files ``purify`` writes into ``--out``; a folder holding only these (with a purify
#: ``summary.json``) is a previous result, which a new run replaces
OUTPUT_FILES = frozenset({"model.safetensors", "model.json", "summary.json", "model.onnx"})


@contextlib.contextmanager
def _flag(name: str):
    """Prefix the message of a :class:`PurifyError` or :class:`qcbench.io.ModelFileError` raised
    inside with the flag ``name`` (the messages start with the offending path)."""
    try:
        yield
    except (PurifyError, io.ModelFileError) as err:
        raise type(err)(f"{name} {err}") from None


def _positive_int(flag: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PurifyError(f"{flag} {value!r}: must be a positive integer")
    return value


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked against
    the devices this machine has."""
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise PurifyError(f"--device {text}: not one of auto, cpu, cuda, cuda:N")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PurifyError(f"--device {text}: no CUDA device is available; use --device cpu or auto")
        n, index = torch.cuda.device_count(), int(text.partition(":")[2] or 0)
        if index >= n:
            raise PurifyError(f"--device {text}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return torch.device(text)


def _is_purify_output(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    if not names <= OUTPUT_FILES or "summary.json" not in names:
        return False
    try:
        return json.loads((folder / "summary.json").read_text()).get("command") == "purify"
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: str | Path) -> Path:
    """``--out``: a folder that does not exist yet, an empty folder or a previous ``purify``
    output (replaced only once the new result is complete), in a writable place. An existing
    file, a symbolic link or a folder with other contents is refused."""
    out = Path(out)
    if out.is_symlink():
        raise PurifyError(f"--out {out}: a symbolic link; give the folder it points to, or a new one")
    if out.exists():
        if not out.is_dir():
            raise PurifyError(f"--out {out}: exists and is not a folder; give a new or empty folder")
        if any(out.iterdir()) and not _is_purify_output(out):
            raise PurifyError(
                f"--out {out}: a folder with other contents; give a new or empty folder "
                f"(a previous purify output, holding only {', '.join(sorted(OUTPUT_FILES))}, is replaced)"
            )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PurifyError(f"--out {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PurifyError(f"--out {out}: cannot create files in {parent} (no write permission)")
    return out


def check_defense_params(defense: str, params: dict | None, iterations: int | None = None) -> dict:
    """``--params`` (+ ``--iterations``) for the registered ``defense``: known keys only, every
    integer budget (iterations, batch_size, calib_batches, pda_iterations, …) a positive integer,
    every float setting finite. Returns the merged keywords."""
    from qcbench.defenses.base import defaults_of

    if params is not None and not isinstance(params, dict):
        raise PurifyError(f"--params {json.dumps(params)}: must be a JSON object of defense keywords")
    defaults = defaults_of(defense)
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise PurifyError(f"--params: {defense} has no keyword(s) {unknown}; it takes {sorted(defaults)}")
    if iterations is not None:
        params["iterations"] = _positive_int("--iterations", iterations)
    for key, value in params.items():
        default, flag = defaults[key], f"--params {key}="
        if isinstance(default, int) and not isinstance(default, bool):
            _positive_int(flag.rstrip("="), value)
        elif isinstance(default, float) and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise PurifyError(f"{flag}{value!r}: must be a finite number")
    es = params.get("early_stop")
    if es is not None:
        if not isinstance(es, dict) or set(es) - {"window", "rel_tol"}:
            raise PurifyError(f"--params early_stop={es!r}: must be null or {{window, rel_tol}}")
        _positive_int("--params early_stop.window", es.get("window"))
        tol = es.get("rel_tol", 0.0)
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not math.isfinite(tol):
            raise PurifyError(f"--params early_stop.rel_tol={tol!r}: must be a finite number")
    return params


def check_trigger(trigger, image_size: int | None = None):
    """``--trigger``: a JSON object naming a registered trigger; with ``image_size``, the trigger
    built for it (its other keys checked by its constructor)."""
    from qcbench.triggers import TRIGGERS, create_trigger

    text = json.dumps(trigger)
    if not isinstance(trigger, dict) or not isinstance(trigger.get("name"), str):
        raise PurifyError(f"--trigger {text}: must be a JSON object with a 'name' (registered: {TRIGGERS.names()})")
    if trigger["name"] not in TRIGGERS:
        raise PurifyError(f"--trigger {text}: unknown trigger {trigger['name']!r}; registered: {TRIGGERS.names()}")
    if image_size is None:
        return None
    try:
        return create_trigger(trigger, image_size)
    except (TypeError, ValueError, KeyError, OSError) as err:
        raise PurifyError(f"--trigger {text}: {err}") from None


@dataclass
class PurifyInputs:
    """Everything :func:`purify` works on, checked (:func:`check_inputs`)."""

    out: Path
    device: torch.device
    fp_model: nn.Module
    meta: dict
    x: torch.Tensor
    eval_set: ImageSet | None
    trigger: object | None
    qscheme: object
    method: object
    scheme: str = "mqbench_academic"
    deployment: object = None
    triggered: ImageSet | None = None


def check_inputs(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    arch_kwargs: dict | None = None,
    bits: int = 4,
    scheme: str | None = None,
    defense: str = "lac",
    params: dict | None = None,
    iterations: int | None = None,
    labeled: str | Path | None = None,
    trigger: dict | None = None,
    target: int | None = None,
    triggered: str | Path | None = None,
    export: str | None = None,
    deploy: str = "simulated",
    max_images: int = 1024,
    calib_images: int = 512,
    threads: int | None = None,
    device: str | torch.device = "cpu",
) -> PurifyInputs:
    """Check every input of :func:`purify` and load the model and images, before any
    quantization or optimisation; raise :class:`PurifyError` (or :class:`qcbench.io.ModelFileError`
    for a checkpoint or tensor file that is no safetensors) naming the flag and value.
    ``scheme`` None takes the ``deploy`` target's scheme (``mqbench_academic`` for ``simulated``);
    a ``scheme`` other than the one the deployment's runtime uses is warned about on stderr."""
    from qcbench.defenses import DEFENSES, LayerwiseDefense, create_defense
    from qcbench.export import DEPLOYMENTS, EXPORTS, create_deployment
    from qcbench.quant import SCHEMES, create_scheme

    # the flags, cheapest first
    if deploy not in DEPLOYMENTS:
        raise PurifyError(f"--deploy {deploy}: unknown deployment; one of {list(DEPLOYMENTS)}")
    deployment = create_deployment(deploy)
    if export is not None and export not in EXPORTS:
        raise PurifyError(f"--export {export}: unknown format; one of {list(EXPORTS)}")
    export = export or deployment.export
    scheme = scheme or deployment.scheme or "mqbench_academic"
    if scheme not in SCHEMES:
        raise PurifyError(f"--scheme {scheme}: unknown scheme; registered: {SCHEMES.names()}")
    if defense not in DEFENSES:
        raise PurifyError(f"--defense {defense}: unknown defense; registered: {DEFENSES.names()}")
    if not (isinstance(DEFENSES.get(defense), type) and issubclass(DEFENSES.get(defense), LayerwiseDefense)):
        raise PurifyError(f"--defense {defense}: not a layer-wise reconstruction defense (lac, efrap)")
    try:
        qscheme = create_scheme(scheme, bits)
    except (ValueError, TypeError) as err:
        raise PurifyError(f"--bits {bits}: {err} (scheme {scheme})") from None
    if deployment.bits is not None and bits not in deployment.bits:
        raise PurifyError(f"--deploy {deploy}: runs {' or '.join(map(str, deployment.bits))} bits, not --bits {bits}")
    if export is not None and bits not in EXPORTS[export]:
        raise PurifyError(
            f"--export {export} --bits {bits}: {export} holds exact grids only at "
            f"{' or '.join(map(str, EXPORTS[export]))} bits"
        )
    if deployment.scheme is not None and qscheme != create_scheme(deployment.scheme, bits):
        print(
            f"purify: warning: --scheme {scheme} is not the quantizer --deploy {deploy} uses "
            f"({deployment.scheme}); the result is safe only where {scheme}'s exact grids run "
            f"(as exported), not if {deploy} re-quantizes it with its own",
            file=sys.stderr,
        )
    params = check_defense_params(defense, params, iterations)
    _positive_int("--max-images", max_images)
    _positive_int("calib_images", calib_images)
    if threads is not None:
        _positive_int("--threads", threads)
    for flag, value in (("--num-classes", num_classes), ("--in-channels", in_channels)):
        if value is not None:
            _positive_int(flag, value)
    if arch_kwargs is not None and not isinstance(arch_kwargs, dict):
        raise PurifyError(f"--arch-kwargs {json.dumps(arch_kwargs)}: must be a JSON object")
    check_normalization(mean, std)
    if (mean is None) != (std is None):
        raise PurifyError("--mean and --std go together")
    if trigger is not None and triggered is not None:
        raise PurifyError("--trigger and --triggered: give one (a trigger to stamp, or already-triggered images)")
    if (trigger is None and triggered is None) != (target is None):
        raise PurifyError("--target goes with --trigger (and --labeled) or with --triggered")
    if trigger is not None and labeled is None:
        raise PurifyError("--trigger/--target need --labeled data to measure BA/ASR")
    if trigger is not None:
        check_trigger(trigger)
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
        raise PurifyError(f"--target {target!r}: must be a class index >= 0")
    device = resolve_device(device)
    out = check_out(out)

    # the files
    io.check_safetensors(checkpoint)
    x = None
    if in_channels is None and "in_channels" not in sidecar_meta(checkpoint):
        with _flag("--images"):
            x = load_images(images, None, max_images)  # the images say how many channels
        in_channels = int(x.shape[1])
    fp_model, meta = load_checkpoint(checkpoint, arch, num_classes, in_channels, mean, std, arch_kwargs)
    if x is None:
        with _flag("--images"):
            x = load_images(images, meta["in_channels"], max_images)
    n_classes = meta["num_classes"]
    if target is not None and target >= n_classes:
        raise PurifyError(f"--target {target}: outside [0, {n_classes}) for a {n_classes}-class model")
    eval_set, trig, trig_set = None, None, None
    for flag, value in (("--labeled", labeled), ("--triggered", triggered)):
        if value is None:
            continue
        with _flag(flag):
            data = load_labeled(value, n_classes, meta["in_channels"])
        if data.x.shape[-2:] != x.shape[-2:]:
            raise PurifyError(
                f"{flag} {value}: images of {tuple(data.x.shape[-2:])} pixels, --images has {tuple(x.shape[-2:])}"
            )
        if flag == "--triggered":
            if not bool((data.y != target).any()):
                raise PurifyError(f"--triggered {value}: every image has the target label {target}; ASR needs others")
            trig_set = data
        else:
            eval_set = data
    if trigger is not None:
        trig = check_trigger(trigger, int(eval_set.x.shape[-2]))

    batch = params.get("batch_size", CPU_DEFAULTS.get(defense, {}).get("batch_size", 32))
    settings = CPU_DEFAULTS.get(defense, {}) | {"calib_batches": min(32, math.ceil(len(x) / batch))} | params
    try:
        method = create_defense(defense, dict(settings))
    except TypeError as err:
        raise PurifyError(f"--defense {defense}: {err}") from None
    return PurifyInputs(out, device, fp_model, meta, x, eval_set, trig, qscheme, method, scheme, deployment, trig_set)


# -- non-finite results, atomic output -----------------------------------------------------------
def _unit_name(entry: dict) -> str:
    return f"layer unit {entry.get('unit')} ({', '.join(entry.get('modules') or [str(entry.get('module'))])})"


def _nonfinite_unit(entry: dict) -> bool:
    return any(isinstance(entry.get(k), float) and not math.isfinite(entry[k]) for k in ("loss_first", "loss"))


def check_finite_result(model: nn.Module, log: list[dict], out: Path) -> None:
    """Refuse a purified model with a NaN or infinite parameter or buffer, naming the first layer
    unit whose loss was non-finite (else the tensor)."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if not bad:
        return
    where = next((_unit_name(e) for e in log if _nonfinite_unit(e)), None)
    what = f"the loss became non-finite in {where}" if where else f"tensor {bad[0]!r} is NaN or infinite"
    raise PurifyError(f"the purified model is not finite: {what}; nothing was written to --out {out}")


def _publish(out: Path, write) -> None:
    """Run ``write(folder)`` on a fresh hidden folder beside ``out``, then rename it to ``out``
    (replacing an empty folder or a previous purify output): ``out`` is never half-written."""
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = out.absolute().with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.is_dir() and any(out.iterdir()):
        if not _is_purify_output(out):
            raise PurifyError(f"--out {out}: other files appeared in it during the run; the result is in {tmp}")
        old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError as err:
        if old is not None:
            os.rename(old, out)
        raise PurifyError(f"--out {out}: cannot put the result in place ({err}); it is in {tmp}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the command -------------------------------------------------------------------------------
def purify(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    **options,
) -> dict:
    """Quantize ``checkpoint`` with the ``scheme`` family at ``bits``, purify it with ``defense``
    on unlabeled ``images``, write ``out/model.safetensors`` (+ ``.json``: the exact quantizer,
    :func:`qcbench.export.quantization_record`), ``out/summary.json`` and, with ``export="onnx"``,
    ``out/model.onnx`` (:func:`qcbench.export.export_qdq_onnx`); return the summary. Every input
    is checked first (:func:`check_inputs`); a purified model that is not finite is never written,
    and ``out`` appears only once complete. ``options`` are :func:`check_inputs`' keywords (arch,
    bits, scheme, defense, labeled, trigger, triggered, export, deploy, ...), with its defaults."""
    from qcbench import export as qexport
    from qcbench.defenses.layerwise import NonFiniteLoss
    from qcbench.quant import calibrate, quantize_model

    t_start = time.perf_counter()
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        bound = inspect.signature(check_inputs).bind(checkpoint, images, out, **options)
    except TypeError as err:
        raise PurifyError(f"purify: {err}") from None
    bound.apply_defaults()
    o = bound.arguments
    inputs = check_inputs(**o)
    bits, defense, labeled = o["bits"], o["defense"], o["labeled"]
    trigger, target, calib_images, threads = o["trigger"], o["target"], o["calib_images"], o["threads"]
    scheme, deployment = inputs.scheme, inputs.deployment
    export = o["export"] or deployment.export
    out, device, x, method, qscheme, meta = (
        inputs.out, inputs.device, inputs.x, inputs.method, inputs.qscheme, inputs.meta
    )  # fmt: skip
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    fp_model = inputs.fp_model.to(device)
    wall["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    qmodel = quantize_model(fp_model, qscheme)
    calibrate(qmodel, _calib_batches(x, calib_images, device))
    wall["quantize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    calib = method.calibration_batches(ImageSet(x, torch.zeros(len(x), dtype=torch.long)), g, device)
    try:
        purified = method.reconstruct(qmodel, calib, g)
    except NonFiniteLoss as err:
        raise PurifyError(f"{err}; nothing was written to --out {out} (try a lower lr in --params)") from None
    wall["defense"] = time.perf_counter() - t0
    check_finite_result(purified, getattr(method, "log", []), out)
    # a dynamic activation quantizer's ranges as the purified model used them on the defender images
    recorded = qexport.record_activation_ranges(purified, _calib_batches(x, calib_images, device))

    metrics = None
    if inputs.eval_set is not None or inputs.triggered is not None:
        t0 = time.perf_counter()
        metrics = {
            name: measure(m, inputs, target, device)
            for name, m in (("fp", fp_model), ("quantized", qmodel), ("purified", purified))
        }
        wall["evaluate"] = time.perf_counter() - t0
    wall["total"] = time.perf_counter() - t_start

    safe_for = deployment.safe_for(scheme, bits, export)
    settings_all = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "images": str(images),
        "n_images": len(x),
        "calib_images": min(calib_images, len(x)),
        "bits": bits,
        "scheme_name": scheme,
        "scheme": qscheme.to_dict(),
        "defense": defense,
        "defense_params": method.params,
        "labeled": None if labeled is None else str(labeled),
        "trigger": trigger,
        "triggered": None if o["triggered"] is None else str(o["triggered"]),
        "target": target,
        "deploy": deployment.name,
        "export": export,
        "seed": seed,
        "device": str(device),
    }
    dynamic = sorted(recorded)
    model_meta = meta | {
        "image_size": int(x.shape[-2]),
        "attack": None,
        "scheme": qscheme.to_dict(),
        "scheme_name": scheme,
        "bits": bits,
        "defense": defense,
        "defense_params": method.params,
        "stage": "purify",
        "seed": seed,
        "source": {"checkpoint": str(checkpoint), "sha256": settings_all["checkpoint_sha256"]},
        "quant_params": qexport.quantization_record(purified, recorded),
        "quant_params_note": (
            "every weight grid and every activation range with fixed=true is fixed as used when the "
            "defense chose the roundings; "
            + (
                f"the activation ranges of {', '.join(dynamic)} are dynamic (recomputed per batch, as "
                "purified); 'recorded' holds the ranges they used on the defender images, which model.onnx fixes"
                if dynamic
                else "no range is dynamic"
            )
        ),
        "deploy": deployment.name,
        "safe_for": safe_for,
        "wall_s": wall["quantize"] + wall["defense"],
        "config_hash": provenance.config_hash(settings_all),
    }
    summary = {
        "command": "purify",
        "settings": settings_all,
        "model": meta,
        "safe_for": safe_for,
        "wall_s": wall,
        "units": getattr(method, "log", []),
        "metrics": metrics,
        "outputs": {"model": str(out / "model.safetensors"), "meta": str(out / "model.json")},
        "versions": json.loads(provenance.versions()),
    }

    def write(folder: Path) -> None:
        io.save_model(purified, folder / "model.safetensors", _clean(model_meta))
        if export == "onnx":
            t0 = time.perf_counter()
            fixed = qexport.fix_activation_ranges(copy.deepcopy(purified).cpu(), recorded)
            try:
                summary["export"] = qexport.export_qdq_onnx(
                    fixed, x[:1].float() / 255.0, folder / "model.onnx", bits=bits
                )
            except qexport.ExportError as err:
                raise PurifyError(f"--export onnx: {err}; nothing was written to --out {out}") from None
            summary["export"]["file"] = str(out / "model.onnx")
            summary["outputs"]["onnx"] = str(out / "model.onnx")
            if metrics is not None:
                ort_model = qexport.load_onnx(folder / "model.onnx", threads)
                metrics["onnxruntime"] = measure(ort_model, inputs, target, "cpu")
            wall["export"] = time.perf_counter() - t0
        _write_json(folder / "summary.json", summary)

    _publish(out, write)
    return _clean(summary)


def _calib_batches(x: torch.Tensor, limit: int, device):
    """The defender images in calibration batches of 64, on ``device``."""
    return (xb.to(device) for xb, _ in ImageSet(x, torch.zeros(len(x))).batches(64, limit=limit))


def measure(model: nn.Module, inputs: PurifyInputs, target: int | None, device) -> dict:
    """BA on ``--labeled`` (None without it) and ASR: on ``--labeled`` stamped with ``--trigger``, or
    on the ``--triggered`` images (the images whose true label is ``target`` excluded; ``asr_all``
    counts every image), None when neither was given. Percentages."""
    from qcbench.metrics import _asr, evaluate, predict

    res = {"ba": None, "asr": None, "asr_all": None}
    if inputs.eval_set is not None:
        res |= evaluate(model, inputs.eval_set, inputs.trigger, target, 256, device)
    if inputs.triggered is not None:
        pred = predict(model, inputs.triggered.x, 256, device)
        res |= {
            "asr": _asr(pred, inputs.triggered.y, target),
            "asr_all": 100.0 * (pred == target).float().mean().item(),
            "n_triggered": len(inputs.triggered),
        }
    return res
