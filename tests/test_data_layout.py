"""A dataset folder in the wrong layout, or a missing Tiny-ImageNet archive, fails in prepare_data
with the folder it read and the layout it expects there, before any training job starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
from qcbench.data import DataSourceError, load_prepared, prepare_dataset
from qcbench.fabricate import fabricate

from .conftest import ROOT

SMALL = {
    "cifar10": ({"train_per_class": 2, "test_per_class": 1}, {"verify_md5": False}, "cifar-10-batches-py"),
    "tinyimagenet": ({"train_per_class": 1, "val_per_class": 1, "test_images": 0}, {}, "tiny-imagenet-200"),
    "imagenette": ({"train_per_class": 1, "val_per_class": 1}, {"image_size": 32}, "imagenette2-320"),
    "gtsrb": ({"train_per_class": 1, "test_per_class": 1}, {}, "gtsrb"),
}
LAYOUT_WORDS = {
    "cifar10": "cifar-10-batches-py/ holding data_batch_1",
    "tinyimagenet": "tiny-imagenet-200/ holding wnids.txt, train/<wnid>/images/*.JPEG",
    "imagenette": "imagenette2-320/train/<wnid>/*.JPEG",
    "gtsrb": "gtsrb/GTSRB/Training/<class 00000..00042>/*.ppm",
}


def prepare(tmp_path, name, path, **source):
    return prepare_dataset(name, {"path": str(path), **source}, tmp_path / "out" / "d.safetensors", 0.1, 0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_path_one_level_too_deep_names_the_path_the_layout_and_the_parent(tmp_path, name):
    kwargs, source, top = SMALL[name]
    fabricate(name, tmp_path / "raw", **kwargs)
    prepare(tmp_path, name, tmp_path / "raw", **source)  # the right path reads
    with pytest.raises(DataSourceError) as err:
        prepare(tmp_path, name, tmp_path / "raw" / top, **source)
    msg = str(err.value)
    assert f"data.sources.{name}.path = '{tmp_path / 'raw' / top}'" in msg
    assert f"expected layout under {tmp_path / 'raw' / top}: {LAYOUT_WORDS[name]}" in msg
    assert f"set the path to its parent, {tmp_path / 'raw'}" in msg


@pytest.mark.parametrize("name", sorted(SMALL))
def test_missing_folder_names_it_and_the_layout(tmp_path, name):
    _, source, _ = SMALL[name]
    with pytest.raises(DataSourceError) as err:
        prepare(tmp_path, name, tmp_path / "absent", **source)
    msg = str(err.value)
    assert f"expected layout under {tmp_path / 'absent'}: {LAYOUT_WORDS[name]}" in msg
    assert f"{tmp_path / 'absent'} does not exist" in msg


def test_missing_tinyimagenet_archive_says_to_unpack_it(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(
        DataSourceError, match=r"raw/tiny-imagenet-200/wnids\.txt is missing; unpack tiny-imagenet-200\.zip"
    ):
        prepare(tmp_path, "tinyimagenet", tmp_path / "raw")


def test_tinyimagenet_zip_is_unpacked_where_it_lies(tmp_path):
    fabricate("tinyimagenet", tmp_path / "src", **SMALL["tinyimagenet"][0])
    (tmp_path / "raw").mkdir()
    with zipfile.ZipFile(tmp_path / "raw" / "tiny-imagenet-200.zip", "w") as z:
        for f in sorted((tmp_path / "src").rglob("*")):
            z.write(f, f.relative_to(tmp_path / "src"))
    prepare(tmp_path, "tinyimagenet", tmp_path / "raw")
    s = load_prepared(tmp_path / "out" / "d.safetensors")
    assert len(s.train) == 200 and (tmp_path / "raw" / "tiny-imagenet-200" / "wnids.txt").is_file()


@pytest.mark.slow
def test_prepare_data_job_fails_first_with_the_layout(tmp_path):
    """The paper config at smoke budgets, Tiny-ImageNet's clean model asked for, its folder one level
    too deep: the prepare_data job fails with the message; no training job starts."""
    fabricate("tinyimagenet", tmp_path / "resources/fabricated/tinyimagenet", **SMALL["tinyimagenet"][0])
    (tmp_path / "resources/fabricated/cifar10").mkdir()  # run.datasets' source must exist to plan
    wrong = "resources/fabricated/tinyimagenet/tiny-imagenet-200"
    target = "results/tinyimagenet/resnet18/clean/w32/none/seed0/model.safetensors"
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--config", f"data={{sources: {{tinyimagenet: {{path: {wrong}}}}}}}",
           "--configfile", str(ROOT / "config/config.yaml"), str(ROOT / "config/smoke.yaml"), "--", target]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "rule prepare_data" in proc.stderr, proc.stderr[-3000:]
    log = (tmp_path / "results/logs/prepare_data/tinyimagenet.log").read_text()
    assert f"data.sources.tinyimagenet.path = '{wrong}'" in log
    assert "expected layout under" in log and "set the path to its parent" in log
    assert not (tmp_path / "results/logs/train_clean").exists()
    shutil.rmtree(tmp_path / "resources")
