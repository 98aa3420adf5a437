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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from qcbench._registry import Registry
from qcbench.progress import progress

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

#: per dataset, the files its loader reads under ``data.sources.<name>.path``: a function of the
#: source entry giving (the top folder the archive unpacks to, or None; the layout in words).
#: Every loader states its own next to it; ``prepare_dataset``'s errors quote it.
LAYOUTS: dict[str, Callable[[dict], tuple[str | None, str]]] = {}


class DataSourceError(FileNotFoundError):
    """A dataset's raw files are missing or unreadable."""


def layout_error(name: str, source: dict, err: Exception) -> DataSourceError:
    """``err`` of dataset ``name``'s loader, with the folder it read and the layout it expects
    there; if ``path`` looks like the dataset's top folder itself (one level too deep), says so."""
    path = Path(source.get("path", "."))
    lines = [f"{name}: cannot read the raw files under data.sources.{name}.path = {str(path)!r}: {err}"]
    if name in LAYOUTS:
        top, layout = LAYOUTS[name](source)
        lines.append(f"expected layout under {path}: {layout}")
        if not path.exists():
            lines.append(f"{path} does not exist")
        elif top is not None and not (path / top).exists() and path.name == top:
            lines.append(f"{path} is the folder {top} itself: set the path to its parent, {path.parent}")
    return DataSourceError("\n  ".join(lines))


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


LAYOUTS["fashion_mnist"] = lambda src: (None, f"the IDX files {', '.join(FMNIST_FILES)} (each optionally .gz)")


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


LAYOUTS["cifar10"] = lambda src: (
    "cifar-10-batches-py",
    "cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and batches.meta "
    "(cifar-10-python.tar.gz unpacked)",
)


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
        hint = ""
        if verify_md5 and (Path(path) / "cifar-10-batches-py" / "test_batch").is_file():
            hint = " (the files are there, but not the official archive's: set verify_md5: false for other files)"
        raise DataSourceError(f"CIFAR-10 not found or corrupted under {path}: {err}{hint}") from err
    return (
        _nchw_uint8(train.data),
        torch.as_tensor(train.targets).long(),
        _nchw_uint8(test.data),
        torch.as_tensor(test.targets).long(),
    )


# Image-folder datasets. The papers' settings (LAC, EFRAP): GTSRB 32x32, Tiny-ImageNet 64x64, ImageNette 224x224.


def _rgb(path: str | Path):
    """An image file as an RGB PIL image (grayscale JPEGs become three equal channels)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _fit(im, size: int, crop: bool) -> torch.Tensor:
    """An RGB PIL image as uint8 (3, size, size): stretched to size x size or, with ``crop``, its shorter
    side scaled to ``size`` and the centre cropped. Pillow's bilinear filter widens with the scale
    factor when shrinking, so downscaling is antialiased."""
    import numpy as np
    from PIL import Image

    w, h = im.size
    if crop:
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
    elif (w, h) != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def _decode(
    n: int, item: Callable[[int], tuple], size: int, crop: bool, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``item(i) -> (RGB PIL image, label)`` for i < n, decoded one at a time into a preallocated
    uint8 (n, 3, size, size) tensor (see ``_fit``), with their int64 labels; progress on stderr."""
    x, y = torch.empty((n, 3, size, size), dtype=torch.uint8), torch.empty(n, dtype=torch.int64)
    for i in progress(range(n), desc=desc, unit="img", leave=False):
        try:
            im, y[i] = item(i)
        except DataSourceError:
            raise
        except OSError as err:  # unreadable or missing image: PIL's message names the file
            raise DataSourceError(f"{desc}: image {i}: {err}") from err
        x[i] = _fit(im, size, crop)
    return x, y


GTSRB_CLASSES = 43


def _gtsrb_split(path: str, split: str, download: bool, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import GTSRB

    base = Path(path) / "gtsrb"
    folder = base / "GTSRB" / ("Training" if split == "train" else "Final_Test/Images")
    csv = base / "GT-final_test.csv"
    try:
        ds = GTSRB(path, split=split, download=download)
    except (RuntimeError, OSError) as err:  # folder or CSV absent, a class folder without .ppm files
        raise DataSourceError(f"GTSRB {split} split not found: need {folder} ({err})") from err
    except (KeyError, TypeError, ValueError) as err:  # DictReader rows without Filename/ClassId
        raise DataSourceError(f"{csv}: malformed ({err!r}); need ';'-separated Filename...ClassId rows") from err
    numbers = None
    if split == "train":  # torchvision's class index (rank among sorted folder names) -> the folder's number
        names = sorted(d.name for d in folder.iterdir() if d.is_dir())
        bad = [n for n in names if not (n.isdigit() and int(n) < GTSRB_CLASSES)]
        if bad:
            raise DataSourceError(f"{folder}: class folders {bad} are not GTSRB classes 00000..00042")
        numbers = [int(n) for n in names]

    def item(i: int):
        where = str(folder) if numbers is not None else f"{csv}, line {i + 2}"  # line 1 is the header
        try:
            im, label = ds[i]
        except OSError as err:
            raise DataSourceError(f"{where}: cannot read the image: {err}") from err
        if numbers is not None:
            return im, numbers[label]
        if not 0 <= label < GTSRB_CLASSES:
            raise DataSourceError(f"{where}: ClassId {label} is not a GTSRB class (0..{GTSRB_CLASSES - 1})")
        return im, label

    return _decode(len(ds), item, image_size, crop=False, desc=f"gtsrb {split}")


LAYOUTS["gtsrb"] = lambda src: (
    "gtsrb",
    "gtsrb/GTSRB/Training/<class 00000..00042>/*.ppm (with GT-<class>.csv), gtsrb/GTSRB/Final_Test/Images/*.ppm "
    "and gtsrb/GT-final_test.csv (torchvision's GTSRB layout: the three official zips unpacked into gtsrb/)",
)


@register_dataset("gtsrb")
def load_gtsrb(path: str, download: bool = False, image_size: int = 32, **_) -> RawSplits:
    """GTSRB (43 classes) through ``torchvision.datasets.GTSRB``, in its layout under ``path``:

    - train: ``gtsrb/GTSRB/Training/<class, 5 digits>/*.ppm`` (each folder also has ``GT-<class>.csv``);
    - test: ``gtsrb/GTSRB/Final_Test/Images/*.ppm``, labelled by ``gtsrb/GT-final_test.csv``
      (``;``-separated: Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId).

    Every image (whole, ROI ignored) is resized to ``image_size`` x ``image_size`` (default 32, as in
    BackdoorBench, LAC and EFRAP), bilinear with antialiasing. Training labels are the class folders'
    numbers (torchvision numbers the folders present in sorted order, which agrees only when all 43 are
    there). ``download`` lets torchvision fetch the official archives when the folders are absent.
    """
    return (*_gtsrb_split(path, "train", download, image_size), *_gtsrb_split(path, "test", download, image_size))


def _jpegs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg")) if folder.is_dir() else []


LAYOUTS["tinyimagenet"] = lambda src: (
    "tiny-imagenet-200",
    "tiny-imagenet-200/ holding wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt (tiny-imagenet-200.zip unpacked, or the zip itself)",
)


@register_dataset("tinyimagenet")
def load_tinyimagenet(path: str, download: bool = False, image_size: int = 64, **_) -> RawSplits:
    """Tiny-ImageNet-200 as unpacked from ``tiny-imagenet-200.zip`` into ``path``:

    - ``tiny-imagenet-200/wnids.txt``: the 200 wnids, one a line; class index = line order;
    - train: ``tiny-imagenet-200/train/<wnid>/images/*.JPEG``;
    - test (the val split, as in the papers): ``tiny-imagenet-200/val/images/*.JPEG``, labelled by
      ``tiny-imagenet-200/val/val_annotations.txt`` (tab-separated: filename, wnid, x, y, w, h).

    Images are 64x64 (grayscale ones become RGB); other ``image_size`` values (default 64, as in LAC
    and EFRAP) resize them, bilinear with antialiasing. Not downloadable: ``download`` must be false.
    A ``tiny-imagenet-200.zip`` in ``path`` without that folder is unpacked there first.
    """
    root = Path(path) / "tiny-imagenet-200"
    archive = Path(path) / "tiny-imagenet-200.zip"
    if not root.exists() and archive.is_file():
        import zipfile

        with zipfile.ZipFile(archive) as z:
            z.extractall(path)
    if download:
        raise DataSourceError(
            f"Tiny-ImageNet has no download support: unpack tiny-imagenet-200.zip into {path} (giving {root}) "
            "and set download: false"
        )
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataSourceError(
            f"Tiny-ImageNet not found: {wnids_file} is missing; unpack tiny-imagenet-200.zip into {path} "
            "(or put the zip there); it cannot be downloaded"
        )
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    if not wnids or len(index) < len(wnids):
        raise DataSourceError(f"{wnids_file}: lists no wnids, or one twice")
    train: list[tuple[Path, int]] = []
    for w in wnids:
        files = _jpegs(root / "train" / w / "images")
        if not files:
            raise DataSourceError(
                f"Tiny-ImageNet: no .JPEG images in {root / 'train' / w / 'images'} ({w} is listed in {wnids_file})"
            )
        train += [(f, index[w]) for f in files]
    extra = sorted({d.name for d in (root / "train").iterdir() if d.is_dir()} - index.keys())
    if extra:
        raise DataSourceError(f"{root / 'train'}: class folders {extra} are not listed in {wnids_file}")
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataSourceError(f"Tiny-ImageNet validation labels not found: {ann} is missing")
    test: list[tuple[Path, int]] = []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataSourceError(f"{ann}, line {n}: wnid {fields[1:2]} is not listed in {wnids_file}")
        if not (root / "val" / "images" / fields[0]).is_file():
            raise DataSourceError(f"{ann}, line {n}: image {root / 'val' / 'images' / fields[0]} does not exist")
        test.append((root / "val" / "images" / fields[0], index[fields[1]]))
    if not test:
        raise DataSourceError(f"{ann} lists no images")
    xtr, ytr = _decode(len(train), lambda i: (_rgb(train[i][0]), train[i][1]), image_size, False, "tinyimagenet train")
    xte, yte = _decode(len(test), lambda i: (_rgb(test[i][0]), test[i][1]), image_size, False, "tinyimagenet val")
    return xtr, ytr, xte, yte


IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}


def _imagenette_layout(src: dict) -> tuple[str | None, str]:
    size = src.get("size", "320px")
    folder = IMAGENETTE_FOLDERS.get(size)
    if folder is None:
        return None, f"size {size!r} is none of {sorted(IMAGENETTE_FOLDERS)}"
    return folder, (
        f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG, the ten ImageNette wnids "
        f"({folder}.tgz unpacked; size {size}: {', '.join(f'{k} -> {v}' for k, v in IMAGENETTE_FOLDERS.items())})"
    )


LAYOUTS["imagenette"] = _imagenette_layout


@register_dataset("imagenette")
def load_imagenette(path: str, download: bool = False, size: str = "320px", image_size: int = 224, **_) -> RawSplits:
    """ImageNette (10 ImageNet classes) through ``torchvision.datasets.Imagenette``, in its layout under
    ``path``: ``imagenette2`` (``size`` full), ``imagenette2-320`` (320px, the default) or ``imagenette2-160``
    (160px), each with ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``; val is the test split. Class
    index = the wnid's rank among the sorted class folders (torchvision's rule; train and val must agree).

    Each image (RGB) has its shorter side resized to ``image_size`` (default 224, as in LAC and EFRAP),
    bilinear with antialiasing, then the centre ``image_size`` x ``image_size`` is cropped. ``download``
    lets torchvision fetch the archive of ``size`` when its folder is absent.
    """
    from torchvision.datasets import Imagenette

    if size not in IMAGENETTE_FOLDERS:
        raise ValueError(f"ImageNette size {size!r}: expected one of {sorted(IMAGENETTE_FOLDERS)}")
    folder = Path(path) / IMAGENETTE_FOLDERS[size]
    sets = {}
    for split in ("train", "val"):
        try:
            sets[split] = Imagenette(path, split=split, size=size, download=download and split == "train")
        except (RuntimeError, OSError) as err:  # folder absent, no class folders, a class without .JPEG files
            raise DataSourceError(
                f"ImageNette ({size}) {split} split not found: need {folder / split} ({err})"
            ) from err
        except KeyError as err:  # torchvision's wnid -> class-name table
            raise DataSourceError(f"{folder / split}: class folder {err} is not an ImageNette wnid") from err
    if sets["train"].wnids != sets["val"].wnids:
        raise DataSourceError(f"{folder}: train and val have different class folders, so their class indices differ")
    out: list[torch.Tensor] = []
    for split, ds in sets.items():
        out += _decode(len(ds), ds.__getitem__, image_size, crop=True, desc=f"imagenette {split}")
    return tuple(out)


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


def _channel_stats(x: torch.Tensor, limit: int = 1 << 28) -> tuple[list[float], list[float]]:
    """Per-channel mean and (sample) std of uint8 images in [0, 1] units. Up to ``limit`` values, as
    one float32 tensor (the numbers every prepared Fashion-MNIST / CIFAR-10 cache holds); above it
    (Tiny-ImageNet, ImageNette at 224 px: 5-6 GB as float32) in chunks, accumulated in float64."""
    if x.numel() <= limit:
        xf = x.float() / 255.0
        return xf.mean(dim=(0, 2, 3)).tolist(), xf.std(dim=(0, 2, 3)).tolist()
    c = x.shape[1]
    total, sq, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    step = max(1, limit // (x[0].numel() * 8))
    for i in range(0, len(x), step):
        chunk = x[i : i + step].double() / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        sq += chunk.pow(2).sum(dim=(0, 2, 3))
        n += chunk.numel() // c
    mean = total / n
    var = (sq - n * mean.pow(2)) / (n - 1)
    return mean.tolist(), var.clamp_min(0).sqrt().tolist()


def prepare_dataset(name: str, source: dict, out_path: str | Path, fraction: float, seed: int) -> dict:
    """Load ``name`` from ``source`` and write the cached tensors + ``data.json`` atomically."""
    from safetensors.torch import save_file

    try:
        xtr, ytr, xte, yte = DATASETS.create(name, **source)
    except DataSourceError as err:
        raise layout_error(name, source, err) from err
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mean, std = _channel_stats(xtr)
    meta = {
        "dataset": name,
        "num_classes": int(max(ytr.max(), yte.max()) + 1),
        "in_channels": int(xtr.shape[1]),
        "image_size": int(xtr.shape[2]),
        "mean": mean,
        "std": std,
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
    """A prepared dataset: the training and test sets, the defender's labeled subset of the
    training set, its metadata and (when known) the defender subset's training-set indices."""

    train: ImageSet
    test: ImageSet
    defender: ImageSet
    meta: dict
    defender_idx: torch.Tensor | None = None


def validation_split(splits: Splits, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Carve a validation set out of the training set: ``round(fraction × len(train))`` images drawn
    with ``seed`` among the training images outside the defender subset (never test images).
    Returns (the training set without them, in their original order; the validation images).
    The same splits, ``fraction`` and ``seed`` give the same images."""
    if splits.defender_idx is None:
        raise ValueError("validation_split needs the defender subset's indices (Splits.defender_idx)")
    n = len(splits.train)
    free = torch.ones(n, dtype=torch.bool)
    free[splits.defender_idx] = False
    pool = free.nonzero().flatten()
    k = round(fraction * n)
    if not 0 < k < len(pool):
        raise ValueError(
            f"a validation fraction of {fraction} is {k} images; {len(pool)} training images lie outside the "
            "defender subset, and the validation set takes at least one and leaves at least one"
        )
    val = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k]].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return splits.train.subset(keep.nonzero().flatten()), splits.train.subset(val)


def load_prepared(path: str | Path, verify: bool = True) -> Splits:
    """Read a prepared dataset; ``verify`` checks the SHA-256 recorded in ``data.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if verify and sha256_file(path) != meta["sha256"]:
        raise DataSourceError(f"{path}: checksum differs from {path.with_suffix('.json')}; re-run prepare_data")
    t = load_file(str(path))
    train = ImageSet(t["train_x"], t["train_y"])
    idx = t["defender_idx"]
    return Splits(train, ImageSet(t["test_x"], t["test_y"]), train.subset(idx), meta, idx)


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
