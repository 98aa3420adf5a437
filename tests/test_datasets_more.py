"""GTSRB, Tiny-ImageNet and ImageNette loaders on tiny datasets fabricated in their on-disk formats."""

from collections import Counter

import pytest
import torch
from PIL import Image
from qcbench.data import DataSourceError, load_prepared, prepare_dataset

from .conftest import synthetic_images


def colour(label: int, k: int) -> tuple[int, int, int]:
    """A distinct solid colour per (class, image), with unequal channels so a channel swap shows."""
    return 20 + 40 * label, 230 - 40 * k, 90 + 7 * label + 3 * k


def solid(rgb, size) -> Image.Image:
    return Image.new("RGB", size, rgb)


def prepare(tmp_path, name: str, source: dict):
    out = tmp_path / f"{name}.safetensors"
    meta = prepare_dataset(name, source, out, fraction=0.5, seed=0)
    return meta, load_prepared(out)


def assert_solid(x: torch.Tensor, rgb, tol: int = 1) -> None:
    """Every pixel of the uint8 (3, S, S) image ``x`` is ``rgb`` within ``tol`` (JPEG and resampling rounding)."""
    assert (x.int() - torch.tensor(rgb)[:, None, None]).abs().max() <= tol


def assert_images_match_labels(images, labels, expected: dict, tol: int = 1) -> None:
    """Each image is solid and its colour is one fabricated for its label (pairing kept, RGB order kept)."""
    for x, y in zip(images, labels):
        rgb = x[:, x.shape[1] // 2, x.shape[2] // 2].tolist()
        assert_solid(x, rgb, 0)
        near = [c for c in expected[int(y)] if max(abs(a - b) for a, b in zip(rgb, c)) <= tol]
        assert near, f"label {int(y)}: colour {rgb} not among {expected[int(y)]}"


# ---------------------------------------------------------------- GTSRB

GTSRB_CLASSES = (0, 2, 5)  # not consecutive: labels must be the folder numbers, not their rank
GTSRB_SIZES = ((30, 41), (50, 50), (32, 32))
GTSRB_TEST = ((5, 0), (0, 1), (2, 2), (5, 1))  # (ClassId, image k) per CSV row


def write_gtsrb(root):
    train = root / "gtsrb" / "GTSRB" / "Training"
    for c in GTSRB_CLASSES:
        folder = train / f"{c:05d}"
        folder.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for k, (w, h) in enumerate(GTSRB_SIZES):
            solid(colour(c, k), (w, h)).save(folder / f"00000_{k:05d}.ppm")
            rows.append(f"00000_{k:05d}.ppm;{w};{h};5;5;{w - 5};{h - 5};{c}")
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    images = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, (c, k) in enumerate(GTSRB_TEST):
        w, h = GTSRB_SIZES[k]
        solid(colour(c, k), (w, h)).save(images / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;{w};{h};5;5;{w - 5};{h - 5};{c}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("image_size", [None, 16])
def test_gtsrb_reads_torchvision_layout_and_resizes(tmp_path, image_size):
    src = {"path": str(write_gtsrb(tmp_path / "raw"))} | ({"image_size": image_size} if image_size else {})
    meta, s = prepare(tmp_path, "gtsrb", src)
    size = image_size or 32
    assert s.train.x.shape == (9, 3, size, size) and s.test.x.shape == (4, 3, size, size)
    assert s.train.x.dtype == torch.uint8 and s.train.y.dtype == torch.int64
    assert sorted(Counter(s.train.y.tolist()).items()) == [(0, 3), (2, 3), (5, 3)]
    assert s.test.y.tolist() == [c for c, _ in GTSRB_TEST]  # CSV order
    assert meta["num_classes"] == 6 and meta["image_size"] == size and meta["in_channels"] == 3
    expected = {c: [colour(c, k) for k in range(3)] for c in GTSRB_CLASSES}
    assert_images_match_labels(s.train.x, s.train.y, expected)
    for x, (c, k) in zip(s.test.x, GTSRB_TEST):
        assert_solid(x, colour(c, k))


def test_gtsrb_missing_folder_names_it(tmp_path):
    with pytest.raises(DataSourceError, match=r"gtsrb/GTSRB/Training"):
        prepare(tmp_path, "gtsrb", {"path": str(tmp_path / "nowhere")})


def test_gtsrb_csv_naming_a_missing_file_or_unknown_class(tmp_path):
    root = write_gtsrb(tmp_path / "raw")
    csv = root / "gtsrb" / "GT-final_test.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([*rows[:3], "gone.ppm;30;41;5;5;25;36;2", *rows[3:]]) + "\n")
    with pytest.raises(DataSourceError, match=r"GT-final_test\.csv, line 4: .*gone\.ppm"):
        prepare(tmp_path, "gtsrb", {"path": str(root)})
    csv.write_text("\n".join([*rows[:2], rows[2].rsplit(";", 1)[0] + ";43", *rows[3:]]) + "\n")
    with pytest.raises(DataSourceError, match=r"GT-final_test\.csv, line 3: ClassId 43"):
        prepare(tmp_path, "gtsrb", {"path": str(root)})


# ---------------------------------------------------------------- Tiny-ImageNet

WNIDS = ("n01443537", "n01629819", "n01641577")
TINY_VAL = (("val_0.JPEG", 2, 0), ("val_1.JPEG", 0, 1), ("val_2.JPEG", 1, 2))  # file, class, k


def write_tiny(root):
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for c, w in enumerate(WNIDS):
        (base / "train" / w / "images").mkdir(parents=True)
        boxes = []
        for k in range(3):
            solid(colour(c, k), (64, 64)).save(base / "train" / w / "images" / f"{w}_{k}.JPEG", quality=95)
            boxes.append(f"{w}_{k}.JPEG\t0\t0\t63\t63")
        (base / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    Image.new("L", (64, 64), 77).save(base / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_gray.JPEG")
    lines = []
    for name, c, k in TINY_VAL:
        solid(colour(c, k), (64, 64)).save(base / "val" / "images" / name, quality=95)
        lines.append(f"{name}\t{WNIDS[c]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("image_size", [None, 32])
def test_tinyimagenet_reads_the_zip_layout(tmp_path, image_size):
    src = {"path": str(write_tiny(tmp_path / "raw"))} | ({"image_size": image_size} if image_size else {})
    meta, s = prepare(tmp_path, "tinyimagenet", src)
    size = image_size or 64
    assert s.train.x.shape == (10, 3, size, size) and s.test.x.shape == (3, 3, size, size)
    assert s.train.x.dtype == torch.uint8 and meta["num_classes"] == 3
    assert sorted(Counter(s.train.y.tolist()).items()) == [(0, 3), (1, 4), (2, 3)]  # class = wnids.txt line
    assert s.test.y.tolist() == [c for _, c, _ in TINY_VAL]  # val_annotations.txt order
    expected = {c: [colour(c, k) for k in range(3)] for c in range(3)}
    expected[1].append((77, 77, 77))  # the grayscale JPEG, as RGB
    assert_images_match_labels(s.train.x, s.train.y, expected, tol=3)
    for x, (_, c, k) in zip(s.test.x, TINY_VAL):
        assert_solid(x, colour(c, k), 3)


def test_tinyimagenet_errors_name_the_path_and_line(tmp_path):
    with pytest.raises(DataSourceError, match=r"nowhere/tiny-imagenet-200/wnids\.txt is missing; unpack"):
        prepare(tmp_path, "tinyimagenet", {"path": str(tmp_path / "nowhere")})
    root = write_tiny(tmp_path / "raw")
    with pytest.raises(DataSourceError, match="no download support"):
        prepare(tmp_path, "tinyimagenet", {"path": str(root), "download": True})
    ann = root / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join([*lines[:2], "val_2.JPEG\tn99999999\t0\t0\t63\t63"]) + "\n")
    with pytest.raises(DataSourceError, match=r"val_annotations\.txt, line 3: wnid \['n99999999'\]"):
        prepare(tmp_path, "tinyimagenet", {"path": str(root)})
    ann.write_text("\n".join([*lines, f"val_9.JPEG\t{WNIDS[0]}\t0\t0\t63\t63"]) + "\n")
    with pytest.raises(DataSourceError, match=r"val_annotations\.txt, line 4: image .*val_9\.JPEG does not exist"):
        prepare(tmp_path, "tinyimagenet", {"path": str(root)})
    for f in (root / "tiny-imagenet-200" / "train" / WNIDS[2] / "images").iterdir():
        f.unlink()
    with pytest.raises(DataSourceError, match=rf"no \.JPEG images in .*train/{WNIDS[2]}/images"):
        prepare(tmp_path, "tinyimagenet", {"path": str(root)})


# ---------------------------------------------------------------- ImageNette

NETTE_WNIDS = ("n03888257", "n01440764")  # parachute, tench: class index = rank of the sorted wnids


def write_imagenette(root, folder="imagenette2-160"):
    base = root / folder
    for split, n in (("train", 3), ("val", 2)):
        for w in NETTE_WNIDS:
            c = sorted(NETTE_WNIDS).index(w)
            (base / split / w).mkdir(parents=True)
            for k in range(n):
                size = ((40, 30), (30, 52), (16, 16))[k]
                solid(colour(c, k), size).save(base / split / w / f"{w}_{k}.JPEG", quality=95)
    # a wide image: centre 20x20 red, sides blue, so the centre crop keeps only red
    img = Image.new("RGB", (60, 20), (0, 0, 255))
    img.paste((255, 0, 0), (20, 0, 40, 20))
    img.save(base / "val" / NETTE_WNIDS[0] / "wide.JPEG", quality=95)
    noisy = synthetic_images(1, 24, 3, seed=3)[0][0]
    Image.fromarray(noisy).save(base / "train" / NETTE_WNIDS[1] / "noise.JPEG")
    return root


def test_imagenette_resizes_the_shorter_side_and_centre_crops(tmp_path):
    root = write_imagenette(tmp_path / "raw")
    meta, s = prepare(tmp_path, "imagenette", {"path": str(root), "size": "160px", "image_size": 16})
    assert s.train.x.shape == (7, 3, 16, 16) and s.test.x.shape == (5, 3, 16, 16) and s.train.x.dtype == torch.uint8
    assert meta["num_classes"] == 2
    assert sorted(Counter(s.train.y.tolist()).items()) == [(0, 4), (1, 3)]
    assert sorted(Counter(s.test.y.tolist()).items()) == [(0, 2), (1, 3)]
    noisy = [i for i in range(7) if not (s.train.x[i] == s.train.x[i, :, 8, 8, None, None]).all()]
    assert len(noisy) == 1 and s.train.y[noisy[0]] == 0  # the noise image, in the tench folder
    keep = [i for i in range(7) if i != noisy[0]]
    expected = {c: [colour(c, k) for k in range(3)] for c in range(2)}
    assert_images_match_labels(s.train.x[keep], s.train.y[keep], expected, tol=3)
    wide = [x for x, y in zip(s.test.x, s.test.y) if y == 1 and x[2, 8, 8] < 50]
    assert len(wide) == 1  # its centre is red; blue survives only at the crop's edge columns
    assert (wide[0][:, :, 2:-2].int() - torch.tensor([255, 0, 0])[:, None, None]).abs().max() <= 8


def test_imagenette_errors_name_the_path(tmp_path):
    with pytest.raises(DataSourceError, match=r"nowhere/imagenette2-320/train"):
        prepare(tmp_path, "imagenette", {"path": str(tmp_path / "nowhere")})
    root = write_imagenette(tmp_path / "raw", "imagenette2-320")
    (root / "imagenette2-320" / "val" / "n00000001").mkdir()
    with pytest.raises(DataSourceError, match=r"imagenette2-320/val: class folder 'n00000001' is not an ImageNette"):
        prepare(tmp_path, "imagenette", {"path": str(root)})


def test_channel_stats_in_chunks_equal_the_whole_tensor_ones():
    from qcbench.data import _channel_stats

    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole, chunked = _channel_stats(x), _channel_stats(x, limit=1000)  # 1000 values: chunks of 5 images
    for a, b in zip(whole, chunked, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
