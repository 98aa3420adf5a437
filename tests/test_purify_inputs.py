"""``qcbench purify`` checks every input before any work and never leaves a bad or half-written ``--out``."""

import json

import pytest
import torch
from qcbench import io, purify
from qcbench.cli import main
from qcbench.defenses import LayerwiseDefense
from safetensors.torch import save_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def received(tmp_path, tiny_model, tiny_splits):
    """A qcbench FP checkpoint (+ model.json), unlabeled images as a tensor file and as 8 PNGs,
    labeled test data."""
    m = tiny_splits.meta
    meta = {"arch": "resnet_tiny", "arch_kwargs": {"width": 4}, "num_classes": 10, "in_channels": 1}
    io.save_model(tiny_model, tmp_path / "qc" / "model.safetensors", meta | {"mean": m["mean"], "std": m["std"]})
    save_file({"x": tiny_splits.defender.x[:64].contiguous()}, str(tmp_path / "images.safetensors"))
    from torchvision.io import write_png

    (tmp_path / "pngs").mkdir()
    for i, img in enumerate(tiny_splits.defender.x[:8]):
        write_png(img, str(tmp_path / "pngs" / f"{i:03d}.png"))
    labeled = {"x": tiny_splits.test.x[:64].contiguous(), "y": tiny_splits.test.y[:64].contiguous()}
    save_file(labeled, str(tmp_path / "labeled.safetensors"))
    return tmp_path


def _argv(d, **changes) -> list[str]:
    """A valid, cheap ``purify`` command line on the ``received`` folder ``d``; ``changes`` replace
    flags (``--flag=value``; None drops the flag)."""
    flags = {
        "--images": str(d / "images.safetensors"),
        "--out": str(d / "out"),
        "--iterations": "1",
        "--params": '{"pda_iterations": 1}',
        "--threads": "1",
        "--labeled": str(d / "labeled.safetensors"),
        "--trigger": '{"name": "patch"}',
        "--target": "0",
    }
    flags |= {"--" + k.replace("_", "-"): v for k, v in changes.items()}
    argv = ["purify", str(d / "qc" / "model.safetensors")]
    for k, v in flags.items():
        if v is not None:
            argv += [k, *v] if isinstance(v, list) else [k, v]
    return argv


@pytest.fixture
def no_work(monkeypatch):
    """Quantizing, calibrating or running the defense fails the test: a refusal must come first."""

    def should_not_run(*args, **kwargs):
        raise AssertionError("should not run: the inputs were not checked first")

    import qcbench.quant

    monkeypatch.setattr(qcbench.quant, "quantize_model", should_not_run)
    monkeypatch.setattr(qcbench.quant, "calibrate", should_not_run)
    monkeypatch.setattr(LayerwiseDefense, "reconstruct", should_not_run)


def _refused(argv, capsys, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


REFUSALS = {
    "misspelt trigger": ({"trigger": '{"name": "pach"}'}, ["--trigger", "'pach'", "registered"]),
    "trigger not JSON object": ({"trigger": '"patch"'}, ["--trigger", "'name'"]),
    "trigger bad keyword": ({"trigger": '{"name": "patch", "colour": 1}'}, ["--trigger", "colour"]),
    "trigger without labels": ({"labeled": None}, ["--labeled"]),
    "target too large": ({"target": "12"}, ["--target 12", "[0, 10)"]),
    "target negative": ({"target": "-1"}, ["--target -1"]),
    "iterations negative": ({"iterations": "-5"}, ["--iterations -5", "positive integer"]),
    "iterations zero": ({"iterations": "0"}, ["--iterations 0"]),
    "pda_iterations zero": ({"params": '{"pda_iterations": 0}'}, ["--params pda_iterations", "positive integer"]),
    "batch_size a float": ({"params": '{"batch_size": 2.5}'}, ["--params batch_size", "2.5"]),
    "lr not finite": ({"params": '{"lr": NaN}'}, ["--params lr=nan", "finite"]),
    "unknown param": ({"params": '{"pda_iters": 3}'}, ["--params", "pda_iters", "pda_iterations"]),
    "early_stop window": ({"params": '{"early_stop": {"window": 0}}'}, ["--params early_stop.window 0"]),
    "max images zero": ({"max_images": "0"}, ["--max-images 0"]),
    "bits too few": ({"bits": "1"}, ["--bits 1", "[2, 16]"]),
    "bits too many": ({"bits": "17"}, ["--bits 17"]),
    "threads zero": ({"threads": "0"}, ["--threads 0"]),
    "threads negative": ({"threads": "-2"}, ["--threads -2"]),
    "num classes zero": ({"num_classes": "0"}, ["--num-classes 0"]),
    "std zero": ({"mean": ["0.3"], "std": ["0"]}, ["--std 0.0", "not > 0"]),
    "std negative": ({"mean": ["0.3"], "std": ["-0.2"]}, ["--std -0.2"]),
    "mean nan": ({"mean": ["nan"], "std": ["0.3"]}, ["--mean nan", "finite"]),
    "std inf": ({"mean": ["0.3"], "std": ["inf"]}, ["--std inf", "finite"]),
    "std too many": ({"mean": ["0.3"], "std": ["0.3", "0.3"]}, ["--std has 2 values for 1 input channels"]),
    "mean without std": ({"mean": ["0.3"]}, ["--mean and --std"]),
    "device unknown": ({"device": "gpu"}, ["--device gpu", "auto, cpu, cuda, cuda:N"]),
    "device bad index": ({"device": "cuda:x"}, ["--device cuda:x"]),
    "unknown scheme": ({"scheme": "int4"}, ["--scheme int4", "mqbench_academic"]),
    "non-layerwise defense": ({"defense": "ft"}, ["--defense ft", "layer-wise"]),
    "unknown deployment": ({"deploy": "tflite"}, ["--deploy tflite", "simulated", "onnxruntime"]),
    "unknown export": ({"export": "tflite"}, ["--export tflite", "onnx"]),
    "export at 6 bits": ({"export": "onnx", "bits": "6"}, ["--export onnx --bits 6", "4 or 8 bits"]),
    "deploy at 6 bits": ({"deploy": "onnxruntime", "bits": "6"}, ["--deploy onnxruntime", "not --bits 6"]),
    "target without a trigger": ({"trigger": None}, ["--target goes with"]),
    "patch corner unknown": ({"trigger": '{"name": "patch", "corner": "middle"}'}, ["--trigger", "corner 'middle'"]),
    "patch outside the image": ({"trigger": '{"name": "patch", "x": 30}'}, ["--trigger", "x=30", "[0, 24]"]),
    "blended image missing": ({"trigger": '{"name": "blended", "image": "no.png"}'}, ["--trigger", "no such file"]),
}


@pytest.mark.parametrize("case", REFUSALS)
@pytest.mark.usefixtures("no_work")
def test_purify_refuses_a_bad_flag_before_any_work(received, capsys, case):
    changes, needles = REFUSALS[case]
    _refused(_argv(received, **changes), capsys, *needles)
    assert not (received / "out").exists()


@pytest.mark.usefixtures("no_work")
def test_purify_refuses_cuda_without_a_gpu(received, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        msg = f"--device {device}: no CUDA device is available; use --device cpu or auto"
        _refused(_argv(received, device=device), capsys, msg)
    assert not (received / "out").exists()
    assert purify.resolve_device("auto") == torch.device("cpu")


def test_device_auto_is_the_default_and_picks_cuda_when_there_is_one(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["purify", "--help"])
    assert "auto (CUDA when available, else CPU; the default)" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert purify.resolve_device("auto") == torch.device("cuda")
    assert purify.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(purify.PurifyError, match="--device cuda:2: this machine has 2 CUDA"):
        purify.resolve_device("cuda:2")


@pytest.mark.usefixtures("no_work")
def test_purify_refuses_an_out_that_is_a_file_or_a_foreign_folder(received, capsys):
    out = received / "out"
    out.write_text("keep me")
    _refused(_argv(received), capsys, f"--out {out}: exists and is not a folder")
    assert out.read_text() == "keep me"
    out.unlink()
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    _refused(_argv(received), capsys, f"--out {out}: a folder with other contents")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (received / "blocker").write_text("")
    _refused(_argv(received, out=str(received / "blocker" / "out")), capsys, "--out", "is not a folder")


def _corrupt(folder, name: str, how: str):
    path = folder / name
    if how == "garbage":
        path.write_bytes(b"this is not an image at all")
    else:  # a truncated png
        path.write_bytes((folder / "000.png").read_bytes()[:60])
    return path


@pytest.mark.parametrize("how", ["garbage", "truncated"])
@pytest.mark.usefixtures("no_work")
def test_purify_names_an_undecodable_image(received, capsys, how):
    bad = _corrupt(received / "pngs", "005.png", how)
    _refused(_argv(received, images=str(received / "pngs")), capsys, f"--images {bad}: not a decodable image")
    assert not (received / "out").exists()


@pytest.mark.usefixtures("no_work")
def test_purify_refuses_image_folders_without_images_or_of_two_sizes(received, capsys):
    (received / "empty").mkdir()
    _refused(_argv(received, images=str(received / "empty")), capsys, "--images", "no image files")
    from torchvision.io import write_png

    write_png(torch.zeros(1, 14, 14, dtype=torch.uint8), str(received / "pngs" / "004.png"))
    _refused(_argv(received, images=str(received / "pngs")), capsys, "--images", "004.png", "image size")
    assert not (received / "out").exists()


@pytest.mark.parametrize(
    ("y", "needle"),
    [
        (lambda y: torch.where(y == 3, 10, y), "label 10 outside [0, 10)"),
        (lambda y: y.float(), "labels must be integers"),
        (lambda y: y[:-1], "64 images but 63 labels"),
        (lambda y: y.reshape(8, 8), "one per image"),
    ],
    ids=["out of range", "float", "too few", "2-d"],
)
@pytest.mark.usefixtures("no_work")
def test_purify_checks_the_labeled_data(received, tiny_splits, capsys, y, needle):
    bad = received / "bad_labels.safetensors"
    labels = y(tiny_splits.test.y[:64].long()).contiguous()
    save_file({"x": tiny_splits.test.x[:64].contiguous(), "y": labels}, str(bad))
    _refused(_argv(received, labeled=str(bad)), capsys, f"--labeled {bad}: ", needle)
    assert not (received / "out").exists()


@pytest.mark.usefixtures("no_work")
def test_purify_refuses_a_non_finite_checkpoint(received, tiny_model, capsys):
    state = {k: v.clone().contiguous() for k, v in tiny_model.state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(received / "nan.safetensors"))
    argv = _argv(received, arch="resnet_tiny", arch_kwargs='{"width": 4}', num_classes="10", in_channels="1")
    argv[1] = str(received / "nan.safetensors")
    _refused(argv, capsys, "'fc.weight'", "NaN or infinite")
    assert not (received / "out").exists()


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_purify_fills_an_empty_out_and_replaces_its_own_output(received, capsys):
    out = received / "out"
    out.mkdir()
    assert main(_argv(received)) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(purify.OUTPUT_FILES - {"model.onnx"})  # no --export
    first = json.loads((out / "summary.json").read_text())
    assert main(_argv(received, seed="1")) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["settings"]["seed"] == 1 != first["settings"]["seed"]
    io.load_model(out / "model.safetensors")
    assert _hidden(received) == []  # no temporary or replaced folder left behind


def test_purify_stops_at_the_unit_whose_loss_is_not_finite(received, capsys, monkeypatch):
    import qcbench.defenses.layerwise as layerwise

    real = layerwise.unit_loss
    monkeypatch.setattr(layerwise, "unit_loss", lambda pred, target: real(pred, target) * float("nan"))
    err = _refused(_argv(received), capsys, "loss became non-finite in layer unit 0 (", "nothing was written")
    assert "lac unit 1 " not in err  # stopped there: the later units never ran
    assert not (received / "out").exists() and _hidden(received) == []


def test_purify_refuses_a_purified_model_that_is_not_finite(received, capsys, monkeypatch):
    from qcbench.defenses.lac import LAC

    real = LAC.harden

    def nan_fc(self, layer):
        log = real(self, layer)
        if layer.weight.ndim == 2:  # the classifier, the last unit
            layer.weight.data[0, 0] = float("inf")
        return log

    monkeypatch.setattr(LAC, "harden", nan_fc)
    _refused(_argv(received), capsys, "the purified model is not finite", "'fc.weight'", "nothing was written")
    assert not (received / "out").exists() and _hidden(received) == []


def test_purify_leaves_no_half_written_out_when_writing_fails(received, capsys, monkeypatch):
    def save_then_fail(model, path, meta):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_model", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        main(_argv(received, labeled=None, trigger=None, target=None))
    assert not (received / "out").exists() and _hidden(received) == []
