"""qcbench.fabricate writes each paper dataset in the on-disk format its loader reads, learnably."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from qcbench.cli import main
from qcbench.config import load_config
from qcbench.data import DATASETS, DataSourceError, load_prepared, prepare_dataset
from qcbench.fabricate import FABRICATORS, fabricate

from .conftest import ROOT

# (dataset, fabricator keywords, source keys, classes, image side, train images, test images)
CASES = [
    ("cifar10", {"train_per_class": 20, "test_per_class": 10}, {"verify_md5": False}, 10, 32, 200, 100),
    ("tinyimagenet", {"train_per_class": 2, "val_per_class": 1}, {}, 200, 64, 400, 200),
    ("imagenette", {"train_per_class": 4, "val_per_class": 2}, {"image_size": 48}, 10, 48, 40, 20),
    ("gtsrb", {"train_per_class": 4, "test_per_class": 2}, {}, 43, 32, 172, 86),
]


def nearest_mean_accuracy(s) -> float:
    """Test accuracy of the nearest class mean (of the training images): above chance if learnable."""
    xtr, xte = s.train.x.float().flatten(1), s.test.x.float().flatten(1)
    classes = s.train.y.unique()
    means = torch.stack([xtr[s.train.y == c].mean(0) for c in classes])
    pred = classes[torch.cdist(xte, means).argmin(1)]
    return (pred == s.test.y).float().mean().item()


@pytest.mark.parametrize("name, kwargs, source, classes, side, n_train, n_test", CASES)
def test_fabricated_dataset_prepares_and_is_learnable(tmp_path, name, kwargs, source, classes, side, n_train, n_test):
    fabricate(name, tmp_path / name, **kwargs)
    out = tmp_path / "data.safetensors"
    meta = prepare_dataset(name, {"path": str(tmp_path / name), **source}, out, fraction=0.1, seed=0)
    s = load_prepared(out)
    assert meta["num_classes"] == classes and meta["image_size"] == side
    assert s.train.x.shape == (n_train, 3, side, side) and s.test.x.shape == (n_test, 3, side, side)
    assert sorted(s.train.y.unique().tolist()) == list(range(classes))
    assert nearest_mean_accuracy(s) > 0.9


def test_every_dataset_with_a_paper_source_has_a_fabricator():
    sources = load_config(ROOT / "config" / "config.yaml")["data"]["sources"]
    assert set(sources) <= set(FABRICATORS.names()) <= set(DATASETS.names())


def test_files_are_in_the_archives_layout(tmp_path):
    fabricate("imagenette", tmp_path / "nette", train_per_class=2, val_per_class=1)
    jpegs = sorted((tmp_path / "nette" / "imagenette2-320").glob("*/n*/*.JPEG"))
    assert len(jpegs) == 30 and {p.parts[-3] for p in jpegs} == {"train", "val"}
    for p in jpegs:
        with Image.open(p) as im:
            assert im.format == "JPEG" and min(im.size) == 320
    fabricate("cifar10", tmp_path / "cifar", train_per_class=2, test_per_class=1)
    names = {p.name for p in (tmp_path / "cifar" / "cifar-10-batches-py").iterdir()}
    assert names == {f"data_batch_{k}" for k in range(1, 6)} | {"test_batch", "batches.meta"}
    fabricate("tinyimagenet", tmp_path / "tiny", train_per_class=1, val_per_class=1, test_images=2)
    base = tmp_path / "tiny" / "tiny-imagenet-200"
    assert len((base / "wnids.txt").read_text().split()) == 200 and (base / "words.txt").is_file()
    assert len(list((base / "test" / "images").iterdir())) == 2
    fabricate("gtsrb", tmp_path / "gtsrb", train_per_class=1, test_per_class=1)
    train = tmp_path / "gtsrb" / "gtsrb" / "GTSRB" / "Training"
    assert sorted(p.name for p in train.iterdir()) == [f"{c:05d}" for c in range(43)]
    assert (train / "00042" / "GT-00042.csv").is_file()


def test_fabricated_cifar_fails_torchvisions_md5_check_naming_the_key(tmp_path):
    fabricate("cifar10", tmp_path, train_per_class=2, test_per_class=1)
    with pytest.raises(DataSourceError, match="verify_md5"):
        prepare_dataset("cifar10", {"path": str(tmp_path)}, tmp_path / "d.safetensors", 0.1, 0)


def test_the_same_seed_writes_the_same_files(tmp_path):
    for run in ("a", "b"):
        fabricate("gtsrb", tmp_path / run, train_per_class=1, test_per_class=1, seed=3)
    a = sorted((tmp_path / "a").rglob("*.ppm"))
    assert a and all(p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in a)


def test_cli_writes_each_dataset_under_root(tmp_path, capsys):
    assert main(["fabricate", "gtsrb", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "gtsrb" / "gtsrb" / "GT-final_test.csv").is_file()
    assert "gtsrb: wrote" in capsys.readouterr().out
