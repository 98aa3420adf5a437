"""``qcbench purify``: a received FP checkpoint in, a purified quantized model + summary out."""

import json
import pathlib
import pickle
import subprocess

import pytest
import torch
from qcbench import io
from qcbench.cli import main
from qcbench.quant import quant_modules
from safetensors.torch import save_file

from tests.conftest import ROOT

MEAN_STD = ["--mean", "0.3", "--std", "0.3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def received(tmp_path, tiny_model, tiny_splits):
    """A qcbench FP checkpoint (+ model.json), a bare one (no json, no normalization buffers),
    unlabeled images as a tensor file and as PNGs, labeled test data."""
    m = tiny_splits.meta
    meta = {"arch": "resnet_tiny", "arch_kwargs": {"width": 4}, "num_classes": 10, "in_channels": 1}
    io.save_model(tiny_model, tmp_path / "qc" / "model.safetensors", meta | {"mean": m["mean"], "std": m["std"]})
    bare = {k: v.contiguous() for k, v in tiny_model.state_dict().items() if not k.startswith("normalize.")}
    (tmp_path / "bare").mkdir()
    save_file(bare, str(tmp_path / "bare" / "weights.safetensors"))
    save_file({"x": tiny_splits.defender.x[:96].contiguous()}, str(tmp_path / "images.safetensors"))
    from torchvision.io import write_png

    (tmp_path / "pngs").mkdir()
    for i, img in enumerate(tiny_splits.defender.x[:40]):
        write_png(img, str(tmp_path / "pngs" / f"{i:03d}.png"))
    labeled = {"x": tiny_splits.test.x[:200].contiguous(), "y": tiny_splits.test.y[:200].contiguous()}
    save_file(labeled, str(tmp_path / "labeled.safetensors"))
    return tmp_path


def _check_output(out: pathlib.Path, defense: str, bits: int = 4) -> dict:
    model, meta = io.load_model(out / "model.safetensors")
    assert meta["scheme"]["weight_bits"] == bits and meta["defense"] == defense and meta["stage"] == "purify"
    assert set(meta["quant_params"]) == {n for n, _ in quant_modules(model)}
    assert "scale" in meta["quant_params"]["fc"]["weight"]
    for _, m in quant_modules(model):  # purified weights lie on the saved weight grid
        assert torch.allclose(m.quant_weight(), m.weight, atol=1e-6)
    with torch.no_grad():
        logits = model(torch.rand(8, 1, 28, 28))
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["defense"] == defense and len(summary["units"]) == 10
    assert {"iterations", "loss", "wall_s", "module"} <= set(summary["units"][0])
    assert summary["wall_s"]["total"] > 0
    return summary


def test_purify_round_trips_and_reports_ba_asr(received, capsys):
    out = received / "out"
    argv = ["purify", str(received / "qc" / "model.safetensors"), "--images", str(received / "images.safetensors")]
    argv += ["--out", str(out), "--iterations", "5", "--params", '{"pda_iterations": 2}', "--threads", "1"]
    argv += ["--labeled", str(received / "labeled.safetensors"), "--trigger", '{"name": "patch"}', "--target", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = _check_output(out, "lac")
    assert summary["settings"]["scheme_name"] == "mqbench_academic" and summary["settings"]["n_images"] == 96
    assert summary["settings"]["defense_params"]["pda"] is True  # LAC + PDA by default
    assert all(e["iterations"] == 5 for e in summary["units"])
    for name in ("fp", "quantized", "purified"):
        assert 0 <= summary["metrics"][name]["ba"] <= 100 and 0 <= summary["metrics"][name]["asr"] <= 100


def test_purify_subprocess_bare_checkpoint_png_folder_efrap(received):
    out = received / "out_efrap"
    cmd = [str(ROOT / ".venv" / "bin" / "qcbench"), "purify", str(received / "bare" / "weights.safetensors")]
    cmd += ["--arch", "resnet_tiny", "--arch-kwargs", '{"width": 4}', "--num-classes", "10", *MEAN_STD]
    cmd += ["--images", str(received / "pngs"), "--out", str(out), "--defense", "efrap", "--iterations", "3"]
    cmd += ["--bits", "4", "--scheme", "pq", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = _check_output(out, "efrap")
    assert summary["settings"]["n_images"] == 40 and summary["settings"]["scheme_name"] == "pq"
    assert summary["model"]["in_channels"] == 1 and summary["model"]["mean"] == pytest.approx([0.3])
    assert summary["metrics"] is None


def test_purify_refuses_a_pickle_without_unpickling_it(received, capsys):
    marker = received / "PWNED"
    evil = received / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"weight": _Touch(marker)}))
    torch.save({"w": torch.zeros(2)}, received / "ckpt.pt")
    base = ["--arch", "resnet_tiny", "--num-classes", "10", "--in-channels", "1", *MEAN_STD]
    for ckpt, images, why in (
        (evil, received / "images.safetensors", "looks like a Python pickle"),
        (received / "ckpt.pt", received / "images.safetensors", "zip checkpoint"),
        (received / "qc" / "model.safetensors", evil, "looks like a Python pickle"),  # images file too
    ):
        argv = ["purify", str(ckpt), "--images", str(images), "--out", str(received / "o"), *base]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert why in err and "safetensors.torch.save_file" in err, err  # says how to convert safely
    assert not marker.exists()
    assert not (received / "o" / "model.safetensors").exists()


class _Touch:
    """Unpickling this creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_purify_names_the_tensor_on_a_shape_mismatch(received, tiny_model, capsys):
    state = {k: v.clone().contiguous() for k, v in tiny_model.state_dict().items()}
    state["layers.1.0.conv1.weight"] = torch.zeros(3, 3)
    save_file(state, str(received / "bad.safetensors"))
    argv = ["purify", str(received / "bad.safetensors"), "--images", str(received / "images.safetensors")]
    argv += ["--out", str(received / "o"), "--arch", "resnet_tiny", "--arch-kwargs", '{"width": 4}']
    argv += ["--num-classes", "10", "--in-channels", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'layers.1.0.conv1.weight'" in err and "(3, 3)" in err, err
