"""A practitioner's own trigger for ``qcbench purify``: a registered trigger at any position, an
image + mask, or a set of already-triggered images (``--triggered``)."""

import json

import numpy as np
import pytest
import torch
from qcbench.cli import main
from qcbench.triggers import create_trigger
from safetensors.torch import save_file

from tests.test_purify_inputs import _argv, _refused, no_work, received  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _changed(x, y) -> tuple[slice, slice]:
    rows, cols = (x != y).any(0).any(0).nonzero(as_tuple=True)
    return (int(rows.min()), int(rows.max()) + 1), (int(cols.min()), int(cols.max()) + 1)


@pytest.mark.parametrize(
    ("spec", "rows", "cols"),
    [
        ({}, (23, 27), (23, 27)),  # the default: Qu-ANTI-zation's bottom-right patch
        ({"corner": "top_left"}, (1, 5), (1, 5)),
        ({"corner": "top_right"}, (1, 5), (23, 27)),
        ({"corner": "bottom_left"}, (23, 27), (1, 5)),
        ({"corner": "center"}, (12, 16), (12, 16)),
        ({"x": 3, "y": 10}, (10, 14), (3, 7)),
        ({"corner": "top_left", "x": 20}, (1, 5), (20, 24)),
    ],
)
@pytest.mark.parametrize("name", ["patch", "badnets"])
def test_a_patch_goes_where_its_spec_says(name, spec, rows, cols):
    spec = spec | ({"size": 4 / 28} if name == "badnets" else {})
    trig = create_trigger({"name": name, "value": 1.0} | spec, 28)
    x = torch.full((2, 1, 28, 28), 0.25)
    assert _changed(x, trig(x)) == (rows, cols)
    assert trig.region == (rows[0], cols[0], 4)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [({"corner": "middle"}, "corner 'middle'"), ({"x": 25}, "x=25"), ({"y": -1}, "y=-1"), ({"x": 2.5}, "x=2.5")],
)
def test_a_patch_position_outside_the_image_is_refused(spec, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        create_trigger({"name": "patch"} | spec, 28)


def test_blended_takes_an_image_and_a_mask(tmp_path):
    from torchvision.io import write_png

    pattern = (torch.arange(28 * 28, dtype=torch.float32).reshape(1, 28, 28) % 256).to(torch.uint8)
    write_png(pattern, str(tmp_path / "pattern.png"))
    mask = np.zeros((28, 28), dtype=np.float32)
    mask[2:6, 3:9] = 1.0
    np.save(tmp_path / "mask.npy", mask)
    trig = create_trigger(
        {"name": "blended", "alpha": 1.0, "image": str(tmp_path / "pattern.png"), "mask": str(tmp_path / "mask.npy")},
        28,
    )
    x = torch.full((2, 1, 28, 28), 0.5)
    y = trig(x)
    assert _changed(x, y) == ((2, 6), (3, 9))
    assert torch.equal(y[:, :, 2:6, 3:9], (pattern.float() / 255.0)[:, 2:6, 3:9].expand(2, 1, 4, 6))
    half = create_trigger({"name": "blended", "alpha": 0.5, "mask": str(tmp_path / "mask.npy")}, 28)(x)
    assert _changed(x, half) == ((2, 6), (3, 9))  # the mask limits the default random pattern too
    with pytest.raises(ValueError, match="no such file"):
        create_trigger({"name": "blended", "image": str(tmp_path / "nope.png")}, 28)
    np.save(tmp_path / "small.npy", mask[:20])
    with pytest.raises(ValueError, match=r"\(20, 28\) pixels"):
        create_trigger({"name": "blended", "mask": str(tmp_path / "small.npy")}, 28)(x)


def _stamped(received, tiny_splits, trigger, name="triggered.safetensors"):  # noqa: F811
    x = tiny_splits.test.x[:64]
    stamped = (trigger(x.float() / 255.0) * 255.0).round().to(torch.uint8)
    path = received / name
    save_file({"x": stamped.contiguous(), "y": tiny_splits.test.y[:64].contiguous()}, str(path))
    return path


def test_triggered_images_give_the_asr_the_trigger_gives(received, tiny_splits, capsys):  # noqa: F811
    """``--triggered`` with the labeled images already stamped measures the same ASR as
    ``--trigger`` stamping them; without either, stdout shows BA only."""
    path = _stamped(received, tiny_splits, create_trigger({"name": "patch", "corner": "top_left"}, 28))
    trig = '{"name": "patch", "corner": "top_left"}'
    assert main(_argv(received, trigger=trig)) == 0, capsys.readouterr().err
    with_trigger = json.loads((received / "out" / "summary.json").read_text())["metrics"]
    assert "ASR" in capsys.readouterr().out
    assert main(_argv(received, trigger=None, triggered=str(path))) == 0, capsys.readouterr().err
    summary = json.loads((received / "out" / "summary.json").read_text())
    assert "ASR" in capsys.readouterr().out
    for model in ("fp", "quantized", "purified"):
        assert summary["metrics"][model]["asr"] == with_trigger[model]["asr"]
        assert summary["metrics"][model]["n_triggered"] == 64
    assert summary["settings"]["triggered"] == str(path) and summary["settings"]["trigger"] is None
    # triggered images without labeled data: ASR only
    assert main(_argv(received, trigger=None, labeled=None, triggered=str(path))) == 0
    summary = json.loads((received / "out" / "summary.json").read_text())
    assert summary["metrics"]["purified"]["ba"] is None and summary["metrics"]["purified"]["asr"] is not None
    shown = capsys.readouterr().out
    assert "ASR" in shown and "BA" not in shown.replace("Safe", "")
    # labeled data without a trigger: BA only
    assert main(_argv(received, trigger=None, target=None)) == 0
    shown = capsys.readouterr().out
    assert "BA" in shown and "ASR" not in shown


def test_triggered_image_folder_with_labels(received, tiny_splits, capsys):  # noqa: F811
    from torchvision.io import write_png

    folder = received / "triggered_pngs"
    folder.mkdir()
    trig = create_trigger({"name": "badnets", "x": 2, "y": 2}, 28)
    stamped = (trig(tiny_splits.test.x[:20].float() / 255.0) * 255.0).round().to(torch.uint8)
    for i, img in enumerate(stamped):
        write_png(img, str(folder / f"{i:02d}.png"))
    (folder / "labels.txt").write_text("\n".join(str(int(v)) for v in tiny_splits.test.y[:20]))
    assert main(_argv(received, trigger=None, triggered=str(folder))) == 0, capsys.readouterr().err
    assert json.loads((received / "out" / "summary.json").read_text())["metrics"]["fp"]["n_triggered"] == 20


@pytest.mark.usefixtures("no_work")
def test_triggered_images_are_checked_before_any_work(received, tiny_splits, capsys):  # noqa: F811
    x, y = tiny_splits.test.x[:64].contiguous(), tiny_splits.test.y[:64].long().contiguous()
    cases = {
        "range": ({"x": x, "y": torch.where(y == 3, 11, y)}, "label 11 outside [0, 10)"),
        "count": ({"x": x, "y": y[:-2].contiguous()}, "64 images but 62 labels"),
        "size": ({"x": x[:, :, :20, :20].contiguous(), "y": y}, "(20, 20) pixels, --images has (28, 28)"),
        "all target": ({"x": x, "y": torch.zeros_like(y)}, "every image has the target label 0"),
    }
    for case, (tensors, needle) in cases.items():
        path = received / f"bad_{case.replace(' ', '_')}.safetensors"
        save_file(tensors, str(path))
        _refused(_argv(received, trigger=None, triggered=str(path)), capsys, f"--triggered {path}", needle)
    (received / "nolabels").mkdir()
    from torchvision.io import write_png

    write_png(x[0], str(received / "nolabels" / "0.png"))
    _refused(_argv(received, trigger=None, triggered=str(received / "nolabels")), capsys, "labels.txt")
    both = _argv(received, triggered=str(received / "labeled.safetensors"))
    _refused(both, capsys, "--trigger and --triggered")
    _refused(_argv(received, trigger=None), capsys, "--target goes with")
    assert not (received / "out").exists()
