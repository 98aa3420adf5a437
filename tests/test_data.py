import pickle

import numpy as np
import pytest
import torch
from qcbench.data import DataSourceError, augment, defender_indices, load_prepared, prepare_dataset
from qcbench.triggers import create_trigger

from .conftest import synthetic_images, write_idx


def test_fashion_mnist_from_idx_files(tiny_splits):
    assert tiny_splits.train.x.shape == (1200, 1, 28, 28) and tiny_splits.train.x.dtype == torch.uint8
    assert tiny_splits.test.x.shape == (400, 1, 28, 28)
    assert tiny_splits.meta["num_classes"] == 10 and len(tiny_splits.meta["sha256"]) == 64
    assert len(tiny_splits.defender) == 300  # 25% in this fixture


def test_plain_idx_files_read_the_same(tmp_path, tiny_splits):
    folder = write_idx(tmp_path / "plain", gz=False)
    prepare_dataset("fashion_mnist", {"path": str(folder)}, tmp_path / "d.safetensors", 0.25, 0)
    splits = load_prepared(tmp_path / "d.safetensors")
    assert torch.equal(splits.train.x, tiny_splits.train.x) and torch.equal(splits.test.y, tiny_splits.test.y)


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(DataSourceError, match="not found in .*nowhere"):
        prepare_dataset("fashion_mnist", {"path": str(tmp_path / "nowhere")}, tmp_path / "d.safetensors", 0.05, 0)
    assert not (tmp_path / "d.safetensors").exists()


def test_checksum_detects_a_changed_cache(tmp_path, idx_dir):
    out = tmp_path / "d.safetensors"
    prepare_dataset("fashion_mnist", {"path": str(idx_dir)}, out, 0.05, 0)
    blob = bytearray(out.read_bytes())
    blob[-1] ^= 0xFF
    out.write_bytes(bytes(blob))
    with pytest.raises(DataSourceError, match="checksum"):
        load_prepared(out)


def test_defender_subset_is_seeded_and_five_percent():
    a, b, c = defender_indices(60000, 0.05, 0), defender_indices(60000, 0.05, 0), defender_indices(60000, 0.05, 1)
    assert len(a) == 3000 and torch.equal(a, b) and not torch.equal(a, c)
    assert len(torch.unique(a)) == 3000


def test_sample_is_seeded_distinct_and_all_when_large(tiny_splits):
    from qcbench.stages import eval_test

    test = tiny_splits.test
    a, b = test.sample(50), test.sample(50)
    assert len(a) == 50 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # same images each call
    assert not torch.equal(test.sample(50, seed=1).x, a.x)
    rows = {tuple(r.flatten().tolist()) for r in test.x}
    assert all(tuple(r.flatten().tolist()) in rows for r in a.x)  # drawn from the test set
    assert test.sample(None) is test and test.sample(len(test)) is test
    assert len(eval_test({"eval": {"batch_size": 8, "test_images": 30}}, tiny_splits)) == 30
    assert eval_test({"eval": {"batch_size": 8}}, tiny_splits) is test  # default: the whole test set


def _write_cifar(root, n_per_batch=20):
    """CIFAR-10's on-disk format: protocol-2 pickled dicts of uint8 rows (3x32x32, channel-major)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        x, y = synthetic_images(n_per_batch, 32, 3, seed=k)
        rows = x.transpose(0, 3, 1, 2).reshape(n_per_batch, -1)
        with open(base / name, "wb") as f:
            pickle.dump({"data": rows, "labels": y.astype(int).tolist()}, f, protocol=2)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    return x  # the test batch, NHWC


def test_cifar10_loader_reads_the_on_disk_format(tmp_path):
    last = _write_cifar(tmp_path / "cifar")
    out = tmp_path / "c.safetensors"
    meta = prepare_dataset("cifar10", {"path": str(tmp_path / "cifar"), "verify_md5": False}, out, 0.1, 0)
    s = load_prepared(out)
    assert s.train.x.shape == (100, 3, 32, 32) and s.test.x.shape == (20, 3, 32, 32)
    assert np.array_equal(s.test.x.permute(0, 2, 3, 1).numpy(), last)  # channel order preserved
    assert meta["in_channels"] == 3 and len(s.defender) == 10


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="CIFAR-10 not found"):
        prepare_dataset("cifar10", {"path": str(tmp_path)}, tmp_path / "c.safetensors", 0.1, 0)


def test_augment_keeps_shape_and_is_seeded():
    x = torch.rand(16, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0), pad=4)
    b = augment(x, torch.Generator().manual_seed(0), pad=4)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert augment(x, torch.Generator().manual_seed(0), pad=0, flip=False).equal(x)


def test_augment_runs_on_the_batch_device_with_a_cpu_generator():
    """Attacks augment batches already on the GPU with a CPU generator: every index and mask
    must follow the batch (the ``meta`` device stands in for CUDA and rejects CPU operands the
    same way), and the draws stay those of the generator."""
    x = torch.rand(8, 1, 28, 28)
    out = augment(x.to("meta"), torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == x.shape
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    augment(x.to("meta"), g1)
    augment(x, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))  # same draws consumed


@pytest.mark.parametrize("size,expect", [(28, (23, 4)), (32, (27, 4)), (64, (54, 8))])
def test_patch_trigger_location_matches_qu_anti_zation(size, expect):
    trig = create_trigger({"name": "patch"}, size)
    assert trig.box == expect
    x = torch.rand(2, 3, size, size) * 0.5
    x[1, 0, 0, 0] = 0.9
    y = trig(x)
    s, w = expect
    assert torch.equal(y[:, :, :s], x[:, :, :s])  # untouched outside the patch
    assert torch.allclose(y[0, :, s : s + w, s : s + w], x[0].max().expand(3, w, w))
    assert torch.allclose(y[1, :, s : s + w, s : s + w], torch.full((3, w, w), 0.9))


def _id_splits(n_train: int = 200, n_test: int = 50):
    """Splits whose every image carries its own id (train 0..n-1, test n..n+m-1) in its pixels."""
    from qcbench.data import ImageSet, Splits

    def ids(start, n):
        i = torch.arange(start, start + n)
        x = torch.stack([i // 256, i % 256], 1).to(torch.uint8)[:, None, :, None].expand(n, 1, 2, 2).clone()
        return ImageSet(x, i % 10)

    train, test = ids(0, n_train), ids(n_train, n_test)
    idx = defender_indices(n_train, 0.25, 0)
    return Splits(train, test, train.subset(idx), {}, idx)


def _image_ids(s) -> list[int]:
    return (s.x[:, 0, 0, 0].long() * 256 + s.x[:, 0, 1, 0].long()).tolist()


def test_validation_split_is_seeded_and_disjoint_from_defender_and_test():
    """PQBackdoor's stage-2 validation images: round(fraction x train) training images outside the
    defender subset, never a test image; the rest of the training set is everything else, in
    order; the same seed gives the same images, another seed others."""
    from qcbench.data import Splits, validation_split

    splits = _id_splits()
    rest, val = validation_split(splits, 0.1, seed=3)
    v, r = set(_image_ids(val)), set(_image_ids(rest))
    assert len(val) == 20 and len(v) == 20 and len(rest) == 180
    assert v.isdisjoint(_image_ids(splits.defender)) and v.isdisjoint(_image_ids(splits.test))
    assert v.isdisjoint(r) and v | r == set(range(200))
    assert _image_ids(rest) == sorted(r)  # training order kept
    again = validation_split(splits, 0.1, seed=3)[1]
    assert torch.equal(again.x, val.x) and torch.equal(again.y, val.y)
    assert set(_image_ids(validation_split(splits, 0.1, seed=4)[1])) != v
    with pytest.raises(ValueError, match="outside the defender subset"):
        validation_split(splits, 0.9, seed=0)  # 180 > the 150 images outside it
    with pytest.raises(ValueError, match="defender_idx"):
        validation_split(Splits(splits.train, splits.test, splits.defender, {}), 0.1, seed=0)


def test_prepared_splits_carry_the_defender_indices(tiny_splits):
    assert torch.equal(tiny_splits.train.subset(tiny_splits.defender_idx).x, tiny_splits.defender.x)
