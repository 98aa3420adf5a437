"""Purify a received model: quantize a third-party FP checkpoint and run a layer-wise defense
(LAC + PDA or EFRAP) on a few hundred unlabeled images (``qcbench purify``).

Nothing here unpickles: checkpoints and tensor files must be safetensors (or ``.npy``/``.npz``
read with ``allow_pickle=False``); a pickle or torch zip checkpoint is refused with
:data:`qcbench.io.PICKLE_HELP`. The output folder holds ``model.safetensors`` + ``model.json``
(loadable with :func:`qcbench.io.load_model`; the JSON records the scheme and every quantizer's
scale/zero-point) and ``summary.json`` (settings, wall times, the per-unit log and, given labeled
data and a trigger, BA/ASR of the FP, quantized and purified models).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
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

        with Image.open(path) as im:
            pil = im.convert("L" if channels == 1 else "RGB") if channels else im
            img = torch.from_numpy(np.array(pil))
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


def load_labeled(path: str | Path) -> ImageSet:
    """Labeled evaluation images: a prepared dataset (its test split) or a tensor file with ``x`` and ``y``."""
    t = read_tensor_file(path)
    if "test_x" in t and "test_y" in t:
        x, y = t["test_x"], t["test_y"]
    elif "x" in t and "y" in t:
        x, y = t["x"], t["y"]
    else:
        raise PurifyError(f"{path}: labeled data needs tensors 'x' and 'y' (or a prepared dataset); got {sorted(t)}")
    x = _to_uint8_nchw(x, str(path))
    if len(x) != len(y):
        raise PurifyError(f"{path}: {len(x)} images but {len(y)} labels")
    return ImageSet(x, y.long().reshape(-1))


# -- the model ---------------------------------------------------------------------------------
def _normalizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from qcbench.models.layers import Normalize

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Normalize)]


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
    for name, val in (("mean", src_mean), ("std", src_std)):
        if len(val) not in (1, in_channels):
            raise PurifyError(f"--{name} has {len(val)} values for {in_channels} input channels")
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
    if source in ("cli", "json"):  # explicit normalization wins over the checkpoint's
        sd = model.state_dict()
        for k, v in own.items():
            if not torch.equal(sd[k], v):
                print(f"purify: {k} from the {source} overrides the checkpoint's", file=sys.stderr)
                sd[k].copy_(v)
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


def quantization_parameters(qmodel: nn.Module) -> dict:
    """Every quantizer's bits, kind and (frozen/calibrated) scale and zero-point, by layer."""
    from qcbench.quant import quant_modules

    def one(q) -> dict | None:
        if q is None:
            return None
        d = {"bits": q.bits, "symmetric": q.symmetric, "per_channel": q.per_channel, "observer": q.observer}
        if bool(q.calibrated):
            d |= {"scale": q.scale.tolist(), "zero_point": q.zero_point.tolist()}
        return d

    return {name: {"weight": one(m.wq), "act": one(m.aq)} for name, m in quant_modules(qmodel)}


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


# -- the command -------------------------------------------------------------------------------
def purify(
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
    scheme: str = "mqbench_academic",
    defense: str = "lac",
    params: dict | None = None,
    labeled: str | Path | None = None,
    trigger: dict | None = None,
    target: int | None = None,
    max_images: int = 1024,
    calib_images: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Quantize ``checkpoint`` with the ``scheme`` family at ``bits``, purify it with ``defense``
    on unlabeled ``images``, write ``out/model.safetensors`` (+ ``.json``) and ``out/summary.json``;
    return the summary."""
    from qcbench.defenses import DEFENSES, LayerwiseDefense, create_defense
    from qcbench.metrics import evaluate
    from qcbench.quant import SCHEMES, calibrate, create_scheme, quantize_model
    from qcbench.triggers import create_trigger

    t_start = time.perf_counter()
    wall: dict[str, float] = {}
    if scheme not in SCHEMES:
        raise PurifyError(f"unknown scheme {scheme!r}; registered: {SCHEMES.names()}")
    if defense not in DEFENSES:
        raise PurifyError(f"unknown defense {defense!r}; registered: {DEFENSES.names()}")
    if not (isinstance(DEFENSES.get(defense), type) and issubclass(DEFENSES.get(defense), LayerwiseDefense)):
        raise PurifyError(f"defense {defense!r} is not a layer-wise reconstruction defense (lac, efrap)")
    if (trigger is None) != (target is None):
        raise PurifyError("--trigger and --target go together")
    if trigger is not None and labeled is None:
        raise PurifyError("--trigger/--target need --labeled data to measure BA/ASR")
    torch.manual_seed(seed)
    device = torch.device(device)

    t0 = time.perf_counter()
    io.check_safetensors(checkpoint)
    x = None
    if in_channels is None and "in_channels" not in sidecar_meta(checkpoint):
        x = load_images(images, None, max_images)  # the images say how many channels
        in_channels = int(x.shape[1])
    fp_model, meta = load_checkpoint(checkpoint, arch, num_classes, in_channels, mean, std, arch_kwargs)
    if x is None:
        x = load_images(images, meta["in_channels"], max_images)
    eval_set = load_labeled(labeled) if labeled is not None else None
    fp_model.to(device)
    wall["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        qscheme = create_scheme(scheme, bits)
    except ValueError as err:
        raise PurifyError(f"scheme {scheme!r} at {bits} bits: {err}") from err
    qmodel = quantize_model(fp_model, qscheme)
    calibrate(qmodel, (xb.to(device) for xb, _ in ImageSet(x, torch.zeros(len(x))).batches(64, limit=calib_images)))
    wall["quantize"] = time.perf_counter() - t0

    batch = (params or {}).get("batch_size", CPU_DEFAULTS.get(defense, {}).get("batch_size", 32))
    settings = CPU_DEFAULTS.get(defense, {}) | {"calib_batches": min(32, math.ceil(len(x) / batch))} | (params or {})
    try:
        method = create_defense(defense, dict(settings))
    except TypeError as err:
        raise PurifyError(f"defense {defense!r}: {err}") from err
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    calib = method.calibration_batches(ImageSet(x, torch.zeros(len(x), dtype=torch.long)), g, device)
    purified = method.reconstruct(qmodel, calib, g)
    wall["defense"] = time.perf_counter() - t0

    metrics = None
    if eval_set is not None:
        t0 = time.perf_counter()
        trig = create_trigger(trigger, eval_set.x.shape[-2]) if trigger is not None else None
        metrics = {
            name: evaluate(m, eval_set, trig, target, 256, device)
            for name, m in (("fp", fp_model), ("quantized", qmodel), ("purified", purified))
        }
        wall["evaluate"] = time.perf_counter() - t0
    wall["total"] = time.perf_counter() - t_start

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        "target": target,
        "seed": seed,
        "device": str(device),
    }
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
        "quant_params": quantization_parameters(purified),
        "wall_s": wall["quantize"] + wall["defense"],
        "config_hash": provenance.config_hash(settings_all),
    }
    io.save_model(purified, out / "model.safetensors", _clean(model_meta))
    summary = {
        "command": "purify",
        "settings": settings_all,
        "model": meta,
        "wall_s": wall,
        "units": getattr(method, "log", []),
        "metrics": metrics,
        "outputs": {"model": str(out / "model.safetensors"), "meta": str(out / "model.json")},
        "versions": json.loads(provenance.versions()),
    }
    _write_json(out / "summary.json", summary)
    return _clean(summary)
