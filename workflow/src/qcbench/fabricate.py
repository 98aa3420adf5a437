"""Fabricated stand-ins for the paper's datasets, each written in its real on-disk format.

``fabricate(name, root)`` writes a few hundred images of dataset ``name`` under ``root`` in the
layout its loader (:mod:`qcbench.data`) reads, so ``prepare_data`` and every job after it run
unchanged on a machine without the real archives (smoke runs of the paper config, CI):

- ``cifar10``: ``cifar-10-batches-py/`` with the pickled ``data_batch_1..5``, ``test_batch`` and
  ``batches.meta`` of the official archive (their MD5 sums differ from torchvision's, so the
  source needs ``verify_md5: false``);
- ``tinyimagenet``: ``tiny-imagenet-200/`` as unpacked from ``tiny-imagenet-200.zip`` (``wnids.txt``,
  ``words.txt``, ``train/<wnid>/images/*.JPEG`` with ``<wnid>_boxes.txt``, ``val/images/*.JPEG``
  with ``val/val_annotations.txt``, ``test/images/*.JPEG``), 64x64 JPEGs;
- ``imagenette``: ``imagenette2-320/`` (or ``imagenette2``, ``imagenette2-160`` for the other
  ``size`` values) with ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, shorter side 320 px
  (160 px; 350-500 px for ``full``), landscape and portrait;
- ``gtsrb``: ``gtsrb/GTSRB/Training/<class>/*.ppm`` with ``GT-<class>.csv`` for all 43 classes,
  ``gtsrb/GTSRB/Final_Test/Images/*.ppm`` and ``gtsrb/GT-final_test.csv``, 20-60 px PPMs.

Every image is learnable from its class: a class colour and a class stripe pattern (orientation
and period) under pixel noise, so a model trained briefly classifies well above chance. The
images are drawn from a seeded generator: the same call writes the same pixels.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qcbench._registry import Registry

FABRICATORS = Registry("fabricator")
register_fabricator = FABRICATORS.register

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# torchvision's ImageNette classes (torchvision.datasets.Imagenette accepts only these wnids)
IMAGENETTE_WNIDS = (
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
)
IMAGENETTE_SIDES = {"full": (350, 500), "320px": (320, 320), "160px": (160, 160)}
TINYIMAGENET_CLASSES = 200
GTSRB_CLASSES = 43
GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def class_image(label: int, classes: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (height, width, 3) image of class ``label``: a colour (hue from ``label``) and
    stripes (orientation and period from ``label``) at amplitude 60, plus Gaussian noise (std 20).
    Up to 12 hues x 2 orientations x ``ceil(classes / 24)`` periods keep up to hundreds of classes
    apart."""
    hue = (label % 12) / 12.0
    rgb = 128 + 90 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))
    orient, period = (label // 12) % 2, 2 + label // 24
    yy, xx = np.mgrid[0:height, 0:width]
    # from the centre, in units of the shorter side: a centre crop or a uniform resize keeps it
    coord = ((xx - width / 2) if orient else (yy - height / 2)) * (32.0 / min(height, width))
    stripes = 60 * np.sign(np.sin(2 * np.pi * coord / (2 * period)))
    x = rgb[None, None, :] + stripes[..., None] + rng.normal(0, 20, (height, width, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def _labels(per_class: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` labels of each class, shuffled."""
    return rng.permutation(np.repeat(np.arange(classes), per_class))


def _save(array: np.ndarray, path: Path, **kwargs) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


@register_fabricator("cifar10")
def fabricate_cifar10(root: Path, train_per_class: int = 250, test_per_class: int = 50, seed: int = 0, **_) -> Path:
    """CIFAR-10's python batches: five training batches and one test batch, each a pickled dict
    (``data``: uint8 (N, 3072) rows of R, G, B planes; ``labels``; ``batch_label``; ``filenames``),
    and ``batches.meta`` (``label_names``)."""
    rng = np.random.default_rng(seed)
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)

    def batch(labels: np.ndarray, name: str) -> dict:
        data = np.stack([class_image(int(y), 10, 32, 32, rng).transpose(2, 0, 1).reshape(-1) for y in labels])
        return {
            "batch_label": name,
            "labels": [int(y) for y in labels],
            "data": data,
            "filenames": [f"fabricated_{name.replace(' ', '_')}_{i}.png" for i in range(len(labels))],
        }

    train = _labels(train_per_class, 10, rng)
    for k, part in enumerate(np.array_split(train, 5), 1):
        with open(out / f"data_batch_{k}", "wb") as f:
            pickle.dump(batch(part, f"training batch {k} of 5"), f)
    with open(out / "test_batch", "wb") as f:
        pickle.dump(batch(_labels(test_per_class, 10, rng), "testing batch 1 of 1"), f)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": len(train) // 5, "label_names": list(CIFAR10_LABELS), "num_vis": 3072}, f)
    return out


@register_fabricator("tinyimagenet")
def fabricate_tinyimagenet(
    root: Path, train_per_class: int = 5, val_per_class: int = 1, test_images: int = 10, seed: int = 0, **_
) -> Path:
    """Tiny-ImageNet-200 as unpacked from ``tiny-imagenet-200.zip``: 200 wnids, 64x64 JPEGs."""
    rng = np.random.default_rng(seed)
    out = root / "tiny-imagenet-200"
    wnids = [f"n{9000000 + c:08d}" for c in range(TINYIMAGENET_CLASSES)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (out / "words.txt").write_text("".join(f"{w}\tfabricated class {c}\n" for c, w in enumerate(wnids)))
    for c, w in enumerate(wnids):
        boxes = []
        for k in range(train_per_class):
            name = f"{w}_{k}.JPEG"
            _save(class_image(c, TINYIMAGENET_CLASSES, 64, 64, rng), out / "train" / w / "images" / name, quality=90)
            boxes.append(f"{name}\t0\t0\t63\t63")
        (out / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines = []
    for i, c in enumerate(_labels(val_per_class, TINYIMAGENET_CLASSES, rng)):
        name = f"val_{i}.JPEG"
        _save(class_image(int(c), TINYIMAGENET_CLASSES, 64, 64, rng), out / "val" / "images" / name, quality=90)
        lines.append(f"{name}\t{wnids[c]}\t0\t0\t63\t63")
    (out / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    for i in range(test_images):  # unlabelled, as in the archive (no loader reads them)
        c = int(rng.integers(TINYIMAGENET_CLASSES))
        _save(class_image(c, TINYIMAGENET_CLASSES, 64, 64, rng), out / "test" / "images" / f"test_{i}.JPEG")
    return out


@register_fabricator("imagenette")
def fabricate_imagenette(
    root: Path, train_per_class: int = 20, val_per_class: int = 5, size: str = "320px", seed: int = 0, **_
) -> Path:
    """ImageNette in torchvision's layout for ``size`` (``imagenette2-320`` by default): the ten
    ImageNette wnids, JPEGs whose shorter side is ``size``'s (``full``: 350-500 px), alternately
    landscape and portrait with the other side 1.0-1.5x longer."""
    from qcbench.data import IMAGENETTE_FOLDERS

    rng = np.random.default_rng(seed)
    out = root / IMAGENETTE_FOLDERS[size]
    lo, hi = IMAGENETTE_SIDES[size]
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, w in enumerate(IMAGENETTE_WNIDS):
            for k in range(n):
                short = int(rng.integers(lo, hi + 1))
                long = int(short * rng.uniform(1.0, 1.5))
                h, wd = (short, long) if k % 2 == 0 else (long, short)
                name = f"{w}_{split}_{k}.JPEG"
                _save(class_image(c, 10, h, wd, rng), out / split / w / name, quality=90)
    return out


@register_fabricator("gtsrb")
def fabricate_gtsrb(root: Path, train_per_class: int = 10, test_per_class: int = 5, seed: int = 0, **_) -> Path:
    """GTSRB as torchvision reads it: 43 training class folders (``Training/<5 digits>/``, PPMs
    named ``<track>_<image>.ppm``, each folder with its ``GT-<class>.csv``) and the final test set
    (``Final_Test/Images/*.ppm`` labelled by ``GT-final_test.csv``), square, 20-60 px."""
    rng = np.random.default_rng(seed)
    base = root / "gtsrb"

    def image(c: int) -> tuple[np.ndarray, int, int]:
        w = h = int(rng.integers(20, 61))
        return class_image(c, GTSRB_CLASSES, h, w, rng), w, h

    for c in range(GTSRB_CLASSES):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        rows = [GTSRB_HEADER]
        for k in range(train_per_class):
            x, w, h = image(c)
            name = f"{k // 5:05d}_{k % 5:05d}.ppm"
            _save(x, folder / name)
            rows.append(f"{name};{w};{h};{min(5, w // 4)};{min(5, h // 4)};{w - 5};{h - 5};{c}")
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    rows = [GTSRB_HEADER]
    for i, c in enumerate(_labels(test_per_class, GTSRB_CLASSES, rng)):
        x, w, h = image(int(c))
        _save(x, base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;{w};{h};{min(5, w // 4)};{min(5, h // 4)};{w - 5};{h - 5};{c}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return base


def fabricate(name: str, root: str | Path, **kwargs) -> Path:
    """Write dataset ``name`` fabricated in its on-disk format under ``root`` (the folder its
    ``data.sources.<name>.path`` names); returns the dataset's top folder. ``kwargs``: the
    fabricator's image counts (``train_per_class`` ...), ``seed``, and ImageNette's ``size``."""
    fn: Callable[..., Path] = FABRICATORS.get(name)
    return fn(Path(root), **kwargs)
