"""Datasets: raw loaders (a registry), the cached uniform tensor format, and in-memory batching.

Every dataset is prepared once into ``<root>/<name>/data.safetensors`` holding uint8 images
(N, C, H, W), int64 labels and the seeded defender subset, plus ``data.json`` with its
SHA-256 and the per-channel mean/std. Everything downstream reads that file only, so training
runs from in-memory uint8 tensors with augmentation done on tensors (no DataLoader workers).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qcbench._registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DataSourceError(FileNotFoundError):
    """A dataset's raw files are missing or unreadable."""


def _nchw_uint8(data) -> torch.Tensor:
    """Convert a dataset's ``data`` attribute (NHW or NHWC, numpy or tensor) to uint8 NCHW."""
    x = torch.as_tensor(data)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return x.contiguous().to(torch.uint8)


FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@register_dataset("fashion_mnist")
def load_fashion_mnist(path: str, download: bool = False, **_) -> RawSplits:
    """Fashion-MNIST from IDX files (``.gz`` or plain, e.g. Debian's ``dataset-fashion-mnist``).

    The files are staged into torchvision's folder layout and read by
    ``torchvision.datasets.FashionMNIST``; if they are absent and ``download`` is true,
    torchvision downloads them instead.
    """
    from torchvision.datasets import FashionMNIST

    src = Path(path)
    with tempfile.TemporaryDirectory(prefix="qcbench-fmnist-") as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        found = 0
        for name in FMNIST_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, raw / name)
                found += 1
            elif (src / f"{name}.gz").is_file():
                with gzip.open(src / f"{name}.gz", "rb") as fin, open(raw / name, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                found += 1
        if found < len(FMNIST_FILES) and not download:
            raise DataSourceError(
                f"Fashion-MNIST IDX files not found in {src} (need {', '.join(FMNIST_FILES)}, "
                "optionally .gz); install Debian's dataset-fashion-mnist or set download: true"
            )
        root = tmp if found == len(FMNIST_FILES) else str(src)
        train = FashionMNIST(root, train=True, download=download and found < len(FMNIST_FILES))
        test = FashionMNIST(root, train=False, download=False)
        return _nchw_uint8(train.data), train.targets.long(), _nchw_uint8(test.data), test.targets.long()


@register_dataset("cifar10")
def load_cifar10(path: str, download: bool = False, verify_md5: bool = True, **_) -> RawSplits:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10``; ``path`` holds ``cifar-10-batches-py/``.

    ``verify_md5=False`` skips torchvision's check of the official archive's MD5 sums (for test
    files fabricated in CIFAR's format); the prepared cache carries its own SHA-256 either way.
    """
    from torchvision.datasets import CIFAR10

    cls = CIFAR10
    if not verify_md5:  # torchvision's check_integrity accepts any existing file when md5 is None

        class _Unverified(CIFAR10):
            train_list = [[name, None] for name, _ in CIFAR10.train_list]
            test_list = [[name, None] for name, _ in CIFAR10.test_list]
            meta = {**CIFAR10.meta, "md5": None}

        cls = _Unverified
    try:
        train = cls(path, train=True, download=download)
        test = cls(path, train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted."
        raise DataSourceError(f"CIFAR-10 not found or corrupted under {path}: {err}") from err
    return (
        _nchw_uint8(train.data),
        torch.as_tensor(train.targets).long(),
        _nchw_uint8(test.data),
        torch.as_tensor(test.targets).long(),
    )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def defender_indices(n_train: int, fraction: float, seed: int) -> torch.Tensor:
    """The defender's labeled subset: a seeded random ``fraction`` of the training set, sorted."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, round(n_train * fraction))
    return torch.randperm(n_train, generator=g)[:k].sort().values


def prepare_dataset(name: str, source: dict, out_path: str | Path, fraction: float, seed: int) -> dict:
    """Load ``name`` from ``source`` and write the cached tensors + ``data.json`` atomically."""
    from safetensors.torch import save_file

    xtr, ytr, xte, yte = DATASETS.create(name, **source)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    xf = xtr.float() / 255.0
    meta = {
        "dataset": name,
        "num_classes": int(max(ytr.max(), yte.max()) + 1),
        "in_channels": int(xtr.shape[1]),
        "image_size": int(xtr.shape[2]),
        "mean": xf.mean(dim=(0, 2, 3)).tolist(),
        "std": xf.std(dim=(0, 2, 3)).tolist(),
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
        "defender_fraction": fraction,
        "defender_seed": seed,
    }
    tensors = {
        "train_x": xtr,
        "train_y": ytr,
        "test_x": xte,
        "test_y": yte,
        "defender_idx": defender_indices(len(ytr), fraction, seed),
    }
    tmp = out_path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    meta["sha256"] = sha256_file(tmp)
    os.replace(tmp, out_path)
    json_path = out_path.with_suffix(".json")
    json_path.with_suffix(".json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(json_path.with_suffix(".json.tmp"), json_path)
    return meta


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) and int64 labels, kept in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.x[idx], self.y[idx])

    def sample(self, n: int | None, seed: int = 0) -> ImageSet:
        """``n`` images drawn at random with ``seed``, in drawn order (all of them, unchanged, when
        ``n`` is None or not smaller than the set). The same ``n`` and ``seed`` give the same
        images, so every cell evaluated on a sample is compared on the same images."""
        if n is None or n >= len(self):
            return self
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` with ``x`` float in [0, 1]; ``limit`` caps the samples per pass."""
        n = len(self) if limit is None else min(limit, len(self))
        order = torch.randperm(len(self), generator=generator)[:n] if shuffle else torch.arange(n)
        stop = n - (n % batch_size) if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx].float().div_(255.0), self.y[idx]


@dataclass
class Splits:
    train: ImageSet
    test: ImageSet
    defender: ImageSet
    meta: dict


def load_prepared(path: str | Path, verify: bool = True) -> Splits:
    """Read a prepared dataset; ``verify`` checks the SHA-256 recorded in ``data.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if verify and sha256_file(path) != meta["sha256"]:
        raise DataSourceError(f"{path}: checksum differs from {path.with_suffix('.json')}; re-run prepare_data")
    t = load_file(str(path))
    train = ImageSet(t["train_x"], t["train_y"])
    return Splits(train, ImageSet(t["test_x"], t["test_y"]), train.subset(t["defender_idx"]), meta)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a float batch, on tensors. The
    random draws come from the (CPU) ``generator`` whatever ``x``'s device, so a seed gives the
    same augmentation on CPU and CUDA; the indices and the mask then move to ``x``'s device."""
    n, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        di = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (torch.arange(h, device=dev)[None, :] + di[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=dev)[None, :] + dj[:, None])[:, None, None, :]
        chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = xp[torch.arange(n, device=dev)[:, None, None, None], chans, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
