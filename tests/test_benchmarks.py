"""The benchmark suite's summary writer, and that the speed-ups it measured keep results the same."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from qcbench.data import ImageSet
from qcbench.models import create_model
from qcbench.quant import fake_quantize_affine
from qcbench.train import fit, use_channels_last
from torch import nn

from tests.benchmarks import summary as bs
from tests.conftest import ROOT

TSV_HEAD = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tsv(path, s, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TSV_HEAD + f"{s}\t0:00:{int(s):02d}\t1\t1\t1\t1\t0\t0\t90\t{cpu}\n")


@pytest.fixture
def fake_run(tmp_path):
    """A finished run's benchmark files, Snakemake logs and metadata, with known numbers."""
    b = tmp_path / "results" / "benchmarks"
    _tsv(b / "attack/fm/rt/qa/seed0.tsv", 40.0, 38.0)
    _tsv(b / "attack/fm/rt/qa/seed1.tsv", 60.0, 50.0)
    _tsv(b / "train_clean/fm/rt/seed0.tsv", 20.0, 19.0)
    _tsv(b / "prepare_data/fm.tsv", 1.0, 0.5)
    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (logs / "2026-01-01T000000.1.snakemake.log").write_text("7 of 7 steps (100%) done\nElapsed time: 0:01:05.5\n")
    (logs / "2026-01-01T010000.1.snakemake.log").write_text("2 of 2 steps (100%) done\nElapsed time: 0:00:09.0\n")
    (logs / "2026-01-01T020000.1.snakemake.log").write_text("Nothing to be done.\n")
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir()
    for out, (t0, t1) in {"a": (100.0, 130.0), "b": (120.0, 171.0)}.items():
        (meta / bs.encode_metadata_name(out)).write_text(json.dumps({"starttime": t0, "endtime": t1}))
    return tmp_path


def test_local_default_totals_come_from_the_benchmark_files(fake_run):
    r = bs.local_default(fake_run)
    assert set(r) == set(bs.KEYS["local_default"])
    assert list(r["stages"]) == ["attack", "train_clean", "prepare_data"]  # largest first
    att = r["stages"]["attack"]
    assert set(att) == set(bs.STAGE_KEYS)
    assert (att["jobs"], att["total_s"], att["mean_s"], att["max_s"], att["cpu_s"]) == (2, 100.0, 50.0, 60.0, 88.0)
    assert att["share"] == pytest.approx(100 / 121, abs=1e-4)
    assert r["jobs_benchmarked"] == 4 and r["stage_total_s"] == 121.0
    assert r["dominant"] == ["attack", "train_clean"]  # ≥ 10 % of the summed stage time
    # the largest completed invocation's "Elapsed time", not the later small rerun
    assert (r["wall_s"], r["jobs_run"], r["wall_source"]) == (65.5, 7, "snakemake_log")
    assert r["metadata_span_s"] == 71.0


def test_summary_has_every_documented_key_and_is_written_atomically(fake_run, tmp_path):
    sections = {"local_default": bs.local_default(fake_run)}
    s = bs.build_summary(sections, fake_run, {"plan_paper": "not run"})
    assert set(s) == set(bs.KEYS)
    assert set(s["machine"]) == set(bs.KEYS["machine"])
    assert s["torch_version"] == torch.__version__ and s["skipped"] == {"plan_paper": "not run"}
    assert s["plan_paper"] is None and s["local_default"]["jobs_run"] == 7  # not run: null
    out = bs.write_summary(s, tmp_path / "out" / "summary.json")
    assert json.loads(out.read_text())["local_default"]["wall_s"] == 65.5
    assert [p.name for p in out.parent.iterdir()] == ["summary.json"]  # no temporary file left
    with pytest.raises(KeyError, match="undocumented"):
        bs.build_summary({"undocumented": {}}, fake_run)


def test_local_default_without_a_run_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="results/benchmarks"):
        bs.local_default(tmp_path)


def test_every_summary_key_is_documented():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text[text.index("## Keys of summary.json") :]
    names = set(bs.KEYS) | {k for v in bs.KEYS.values() if v for k in v} | set(bs.STAGE_KEYS)
    missing = sorted(n for n in names if not re.search(rf"`{re.escape(n)}`", section))
    assert not missing, f"docs/benchmarks.md's summary keys lack {missing}"


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("qrange", [(-8, 7), (0, 15), (0, 255)])
def test_fake_quantize_is_bitwise_torchs_fused_kernel(per_channel, qrange):
    """The vectorised fake-quantizer gives exactly the fused kernels' values and gradients,
    clamped codes included (wide inputs: many values fall off the grid)."""
    torch.manual_seed(3)
    qmin, qmax = qrange
    x = (torch.randn(8, 6, 5, 5) * 4 + 1).requires_grad_(True)
    if per_channel:
        s, z = torch.rand(8) * 0.3 + 1e-3, torch.randint(qmin, qmax + 1, (8,)).float() * (qmin == 0)
        ref = torch.fake_quantize_per_channel_affine(x, s, z.to(torch.int32), 0, qmin, qmax)
        new = fake_quantize_affine(x, s.view(-1, 1, 1, 1), z.view(-1, 1, 1, 1), qmin, qmax)
    else:
        s, z = torch.tensor(0.07), torch.tensor(float(qmax // 3) * (qmin == 0))
        ref = torch.fake_quantize_per_tensor_affine(x, s, z.to(torch.int32), qmin, qmax)
        new = fake_quantize_affine(x, s, z, qmin, qmax)
    assert torch.equal(ref, new)
    g = torch.randn_like(x)
    (g_ref,) = torch.autograd.grad(ref, x, g)
    (g_new,) = torch.autograd.grad(new, x, g)
    assert torch.equal(g_ref, g_new) and (g_new == 0).any()  # some codes clamped: masked
    with torch.inference_mode():  # the no-grad path computes the same values
        s_, z_ = (s.view(-1, 1, 1, 1), z.view(-1, 1, 1, 1)) if per_channel else (s, z)
        assert torch.equal(fake_quantize_affine(x.detach(), s_, z_, qmin, qmax), ref.detach())


def _fit(model, data, **kw):
    return fit(
        model,
        data,
        lambda m, x, y: F.cross_entropy(m(x), y),
        epochs=2,
        batch_size=32,
        optimizer={"name": "adam", "lr": 1e-3},
        seed=0,
        **kw,
    )


def test_channels_last_is_refused_where_torch_cpu_backward_crashes(tiny_model):
    """resnet_tiny at width 4 has strided 1x1 convs with 4 input channels, whose channels-last
    CPU backward corrupts the heap in torch 2.14.1 (train.use_channels_last); width 8 is safe."""
    assert not use_channels_last(tiny_model, True)
    assert not use_channels_last(nn.Conv2d(6, 12, 1, stride=2), True)
    assert use_channels_last(nn.Conv2d(4, 8, 1, stride=1), True)  # unstrided: fine
    assert use_channels_last(nn.Conv2d(16, 32, 1, stride=2), True)
    assert not use_channels_last(nn.Conv2d(16, 32, 1, stride=2), False)


def test_fit_in_channels_last_trains_the_same_model(tiny_splits, one_torch_thread):
    """Channels-last changes only the summation order inside convolutions: same losses and weights
    to float rounding; the parameters keep their identity and come back contiguous."""
    data = ImageSet(tiny_splits.train.x[:256], tiny_splits.train.y[:256])
    torch.manual_seed(0)
    m = tiny_splits.meta
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=8).eval()
    assert use_channels_last(model, True)
    a, b, init = model, copy.deepcopy(model), copy.deepcopy(model.state_dict())
    params = list(a.parameters())
    h_cl = _fit(a, data, channels_last=True)
    h_ref = _fit(b, data, channels_last=False)
    assert [p is q for p, q in zip(params, a.parameters())] == [True] * len(params)
    assert all(p.is_contiguous() for p in a.parameters())
    assert h_cl == pytest.approx(h_ref, rel=1e-4)
    # Adam turns float-rounding differences of small gradients into small step differences: the
    # two runs' weights differ by a few percent of how far training moved them (6.5 % measured for
    # conv1 at width 8), at most 10 %
    for name, p in a.named_parameters():
        moved = (p - init[name]).norm()
        assert moved > 0 and (p - b.get_parameter(name)).norm() < 0.1 * moved, name


def test_fit_without_channels_last_is_deterministic(tiny_model, tiny_splits, one_torch_thread):
    """The default path (in-memory uint8 batches, seeded order, contiguous) is reproducible bit for bit."""
    data = ImageSet(tiny_splits.train.x[:128], tiny_splits.train.y[:128])
    a, b = tiny_model, copy.deepcopy(tiny_model)
    assert _fit(a, data, channels_last=False) == _fit(b, data, channels_last=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_autocast_dtype_modes(monkeypatch):
    import qcbench.train as tr

    assert tr.autocast_dtype("fp32", "cpu") is None
    assert tr.autocast_dtype("bf16", "cpu") is torch.bfloat16
    monkeypatch.setattr(tr, "bf16_native", lambda device: False)
    assert tr.autocast_dtype("auto", "cpu") is None  # emulated bf16 is slower: stay in float32
    monkeypatch.setattr(tr, "bf16_native", lambda device: True)
    assert tr.autocast_dtype("auto", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match=r"amp is 'fp16', not one of"):
        tr.autocast_dtype("fp16", "cpu")


def test_fit_with_bf16_autocast_keeps_float32_state_and_learns(tiny_splits, one_torch_thread):
    """bf16 autocast: the convolutions run in bfloat16, the weights, gradients and the returned model
    stay float32, a float32 region inside the loss stays float32, and the loss still falls."""
    from qcbench.train import float32_region

    data = ImageSet(tiny_splits.train.x[:512], tiny_splits.train.y[:512])
    torch.manual_seed(0)
    m = tiny_splits.meta
    model = create_model("resnet_tiny", m["num_classes"], m["in_channels"], m["mean"], m["std"], width=8)
    seen = {}

    def loss_fn(mod, x, y):
        with float32_region(x):
            seen["region"] = F.conv2d(x, torch.ones(1, x.shape[1], 3, 3)).dtype
        logits = mod(x)
        seen["logits"] = logits.dtype
        return F.cross_entropy(logits, y)

    hist = fit(
        model, data, loss_fn, epochs=3, batch_size=64, optimizer={"name": "adam", "lr": 2e-3}, seed=0, amp="bf16"
    )
    assert seen == {"region": torch.float32, "logits": torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    assert hist[-1] < 0.8 * hist[0]
    assert torch.is_autocast_enabled("cpu") is False  # nothing leaks out of fit


def test_fit_refuses_autocast_on_a_fake_quantized_model(tiny_model, tiny_splits):
    """bf16's 8-bit mantissa is as coarse as the int8 grid a simulated quantizer models."""
    from qcbench.quant import create_scheme, quantize_model

    q = quantize_model(tiny_model, create_scheme("qa", 8))
    data = ImageSet(tiny_splits.train.x[:64], tiny_splits.train.y[:64])
    with pytest.raises(ValueError, match=r"amp is 'bf16': mixed precision is for full-precision training only"):
        _fit(q, data, amp="bf16")
    _fit(q, data, amp="fp32")  # the default path still trains it
