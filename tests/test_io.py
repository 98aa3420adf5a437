import os
import pickle

import pytest
import torch
from qcbench import io
from qcbench.quant import calibrate, create_scheme, quantize_model
from safetensors.torch import save_file


def _meta(splits):
    m = splits.meta
    return {
        "arch": "resnet_tiny",
        "arch_kwargs": {"width": 4},
        "num_classes": 10,
        "in_channels": 1,
        "mean": m["mean"],
        "std": m["std"],
    }


def test_quantized_model_round_trips_with_its_quantization_parameters(tmp_path, tiny_model, tiny_splits):
    qm = quantize_model(tiny_model, create_scheme("mqbench_academic", 4))
    calibrate(qm, [torch.rand(8, 1, 28, 28)])
    meta = _meta(tiny_splits) | {"scheme": qm.qcbench_scheme.to_dict()}
    io.save_model(qm, tmp_path / "m.safetensors", meta)
    loaded, back = io.load_model(tmp_path / "m.safetensors")
    assert back["scheme"]["weight_bits"] == 4
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), qm.eval()(x))


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickles_are_refused_without_being_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"weight": _Boom()}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
    with pytest.raises(io.ModelFileError, match="pickle"):
        io.check_safetensors(tmp_path / "evil.pkl")
    with pytest.raises(io.ModelFileError, match="zip checkpoint.*convert"):
        io.check_safetensors(tmp_path / "ckpt.pt")
    assert not (tmp_path / "PWNED").exists()


def test_corrupted_safetensors_give_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(io.ModelFileError, match="corrupted"):
        io.check_safetensors(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(io.ModelFileError, match="corrupted"):
        io.check_safetensors(path)


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_model, tiny_splits):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(io.ModelFileError, match="'fc.weight'"):
        io.load_state(tmp_path / "m.safetensors", tiny_model)


def test_parquet_writes_are_atomic(tmp_path, monkeypatch):
    import pandas as pd

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io, "_replace_atomic", fail)
    with pytest.raises(OSError):
        io.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_training_and_quantizing_jobs_do_not_import_pandas():
    """Job start-up: the stages that never write metrics (train, attack, quantize, defend) load
    neither pandas nor pandera (~1 s a job); the metrics stages load them when called."""
    import subprocess
    import sys

    code = (
        "import sys, qcbench.stages, qcbench.attacks, qcbench.defenses, qcbench.quant; "
        "print(sorted(m for m in ('pandas', 'pandera', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
