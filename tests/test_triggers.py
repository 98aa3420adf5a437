"""Every registered trigger: contract (shape, dtype, range, determinism) and its own invariants."""

from __future__ import annotations

import math

import pytest
import torch
from qcbench.triggers import TRIGGERS, PatchTrigger, create_trigger, register_trigger

ALL = ["patch", "badnets", "blended", "sig", "wanet", "input_aware", "lf", "issba"]
SEEDED = ["blended", "wanet", "input_aware", "lf", "issba"]
SIZES = [28, 32, 64]


def images(n: int, c: int, size: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand((n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_registry_and_legacy_imports():
    assert set(ALL) <= set(TRIGGERS.names())
    assert callable(register_trigger) and TRIGGERS.get("patch") is PatchTrigger
    assert PatchTrigger.__doc__.startswith("A solid square in the bottom-right corner (Qu-ANTI-zation's")
    with pytest.raises(KeyError, match="registered: .*badnets"):
        create_trigger({"name": "nope"}, 32)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ALL)
def test_contract(name, size, channels):
    x = images(4, channels, size)
    before = x.clone()
    y = create_trigger({"name": name}, size)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before), "the input must not be modified in place"
    assert not torch.equal(y, x)
    assert all(not torch.equal(y[i], x[i]) for i in range(len(x))), "every image carries the trigger"


@pytest.mark.parametrize("name", ALL)
def test_float64_and_determinism(name):
    x = images(3, 3, 32, dtype=torch.float64)
    a = create_trigger({"name": name}, 32)(x)
    b = create_trigger({"name": name}, 32)(x)  # a fresh instance: nothing depends on call history
    assert a.dtype == torch.float64 and torch.equal(a, b)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(create_trigger({"name": name}, 32)(x), a)


@pytest.mark.parametrize("name", SEEDED)
def test_seed(name):
    x = images(3, 3, 32)
    same = [create_trigger({"name": name, "seed": 7}, 32)(x) for _ in range(2)]
    other = create_trigger({"name": name, "seed": 8}, 32)(x)
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], other)


@pytest.mark.parametrize("name", ["input_aware", "issba", "blended", "lf", "sig", "wanet", "badnets"])
def test_each_image_independent_of_its_batch(name):
    x = images(5, 3, 32)
    trig = create_trigger({"name": name}, 32)
    full = trig(x)
    for i in (0, 3):
        assert torch.allclose(full[i : i + 1], trig(x[i : i + 1]), atol=1e-6)


# --- patch-style triggers ----------------------------------------------------------------------


def assert_only_box_changed(x, y, start, width):
    inside = torch.zeros(x.shape[-2:], dtype=torch.bool)
    inside[start : start + width, start : start + width] = True
    assert torch.equal(y[..., ~inside], x[..., ~inside])
    return y[..., start : start + width, start : start + width]


@pytest.mark.parametrize(
    "size,frac,expect",
    [
        (32, 3 / 32, (28, 3)),  # Blindspots / BackdoorBench: 3x3, bottom-right, 1px margin
        (32, 4 / 32, (27, 4)),
        (32, 6 / 32, (25, 6)),
        (28, 3 / 32, (24, 3)),
        (64, 3 / 32, (56, 6)),
        (64, 6 / 32, (50, 12)),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_badnets_solid_box(size, frac, expect, channels):
    trig = create_trigger({"name": "badnets", "size": frac}, size)
    assert trig.box == expect
    x = images(2, channels, size) * 0.9
    box = assert_only_box_changed(x, trig(x), *expect)
    assert torch.equal(box, torch.ones_like(box))


def test_badnets_default_and_checkerboard():
    assert create_trigger({"name": "badnets"}, 32).box == (28, 3)
    trig = create_trigger({"name": "badnets", "size": 4 / 32, "pattern": "checkerboard"}, 32)
    x = images(2, 3, 32) * 0.5 + 0.25
    box = assert_only_box_changed(x, trig(x), 27, 4)
    expect = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    assert torch.equal(box, expect.expand_as(box))
    with pytest.raises(ValueError, match="pattern"):
        create_trigger({"name": "badnets", "pattern": "stripes"}, 32)
    with pytest.raises(ValueError, match="value"):
        create_trigger({"name": "badnets", "value": "image_max"}, 32)


@pytest.mark.parametrize("size", SIZES)
def test_patch_only_touches_its_box(size):
    trig = create_trigger({"name": "patch"}, size)
    x = images(2, 3, size) * 0.5
    assert_only_box_changed(x, trig(x), *trig.box)


# --- full-image triggers -----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_blended_is_a_convex_blend(channels):
    x = images(4, channels, 32)
    trig = create_trigger({"name": "blended", "alpha": 0.2}, 32)
    y = trig(x)
    p = trig.pattern(x.shape[1:])
    assert p.shape == x.shape[1:] and p.min() >= 0 and p.max() <= 1
    assert torch.allclose(y, 0.8 * x + 0.2 * p, atol=1e-6)
    assert (y - x).abs().max() <= 0.2 + 1e-6
    assert torch.allclose(create_trigger({"name": "blended", "alpha": 1.0}, 32)(x), p.expand_as(x))
    assert torch.equal(create_trigger({"name": "blended", "alpha": 0.0}, 32)(x), x)
    with pytest.raises(ValueError, match="alpha"):
        create_trigger({"name": "blended", "alpha": 1.5}, 32)


@pytest.mark.parametrize("size", SIZES)
def test_sig_signal(size):
    delta, f = 20 / 255, 6
    x = torch.full((2, 3, size, size), 0.5)  # mid-gray: no clipping
    y = create_trigger({"name": "sig"}, size)(x)
    j = torch.arange(size, dtype=torch.float64)
    expect = (delta * torch.sin(2 * math.pi * j * f / size)).float()
    assert torch.allclose(y - x, expect.expand_as(x), atol=1e-6)  # along columns, same on rows/channels
    assert (y - x).abs().max() <= delta + 1e-6
    sign = torch.sign(expect[expect.abs() > 1e-6])
    assert int((sign[1:] != sign[:-1]).sum()) in (2 * f - 1, 2 * f)  # f periods at every size
    x = images(2, 1, size)
    assert (create_trigger({"name": "sig"}, size)(x) - x).abs().max() <= delta + 1e-6


@pytest.mark.parametrize("size", SIZES)
def test_lf_budget_and_spectrum(size):
    eps = 0.05
    trig = create_trigger({"name": "lf", "eps": eps, "window": 3 / 32}, size)
    x = torch.full((2, 3, size, size), 0.5)
    p = trig(x) - x
    assert torch.allclose(p[0], p[1]) and torch.allclose(p[0], trig.pattern((3, size, size)), atol=1e-6)
    assert abs(p.abs().max().item() - eps) < 1e-6
    assert abs(p[0].mean().item()) < 1e-6  # no brightness shift
    spec = torch.fft.rfft2(p[0].double()).abs()
    k = trig.cutoff(size)
    assert k == max(1, round(3 / 32 * size))
    ky = torch.fft.fftfreq(size, d=1.0 / size).abs()[:, None]
    kx = torch.fft.rfftfreq(size, d=1.0 / size)[None, :]
    high = (ky > k) | (kx > k)
    assert spec[:, high].max() < 1e-4 * spec.max()  # only low frequencies
    xr = images(3, 1, size)
    assert (trig(xr) - xr).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("size", SIZES)
def test_wanet_warp(size):
    trig = create_trigger({"name": "wanet"}, size)
    assert trig.grid.shape == (1, size, size, 2) and trig.grid.abs().max() <= 1
    x = images(3, 3, size)
    y = trig(x)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    assert ((y >= lo - 1e-6) & (y <= hi + 1e-6)).all()  # bilinear resampling: convex combinations
    const = torch.full((1, 1, size, size), 0.3)
    assert torch.allclose(trig(const), const, atol=1e-6)
    flat = create_trigger({"name": "wanet", "s": 0.0}, size)
    assert torch.allclose(flat(x), x, atol=1e-5)
    # displacement in pixels is about the same at every size (offsets scale with 1/H)
    line = torch.linspace(-1, 1, size)
    gx, gy = torch.meshgrid(line, line, indexing="ij")
    shift_px = (trig.grid[0] - torch.stack((gy, gx), 2)).abs().amax() * (size - 1) / 2
    assert 0.05 < shift_px < 2.0
    with pytest.raises(ValueError, match="built for"):
        trig(images(1, 3, size + 4))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("density", [0.032, 0.1])
def test_input_aware_mask_density(size, channels, density):
    trig = create_trigger({"name": "input_aware", "density": density}, size)
    x = images(4, channels, size)
    pattern, mask = trig.pattern_and_mask(x)
    assert pattern.shape == x.shape and mask.shape == (4, 1, size, size)
    assert pattern.min() >= 0 and pattern.max() <= 1
    k = round(density * size * size)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((4,), float(k)))
    y = trig(x)
    changed = (y != x).any(dim=1)  # (N, H, W)
    assert changed.sum(dim=(1, 2)).le(k).all() and changed.sum() > 0
    assert torch.equal(y * (1 - mask), x * (1 - mask))  # only masked pixels change
    assert torch.allclose(y * mask, pattern * mask)


def test_input_aware_is_sample_specific():
    trig = create_trigger({"name": "input_aware"}, 32)
    x = images(2, 3, 32)
    pattern, mask = trig.pattern_and_mask(x)
    assert not torch.equal(mask[0], mask[1]) and not torch.allclose(pattern[0], pattern[1])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_issba_budget_and_sample_specific(size, channels):
    eps = 8 / 255
    trig = create_trigger({"name": "issba"}, size)
    x = images(3, channels, size) * 0.8 + 0.1  # no clipping
    r = trig.residual(x)
    assert torch.allclose(r.abs().amax(dim=(1, 2, 3)), torch.full((3,), eps), atol=1e-6)  # exact L-inf budget
    y = trig(x)
    assert torch.allclose(y - x, r, atol=1e-6) and (y - x).abs().max() <= eps + 1e-6
    assert not torch.allclose(r[0], r[1], atol=1e-3)  # each image its own residual
    # the shared "code" component correlates the residuals of different images
    corr = torch.corrcoef(r.flatten(1))[0, 1]
    assert corr > 0.2
    assert (create_trigger({"name": "issba", "eps": 0.01}, size)(x) - x).abs().max() <= 0.01 + 1e-6


def test_wanet_noise_mode_jitters_the_backdoor_warp_per_sample():
    trig = create_trigger({"name": "wanet"}, 32)
    x = images(4, 3, 32)
    a = trig.noise(x, torch.Generator().manual_seed(1))
    b = trig.noise(x, torch.Generator().manual_seed(1))
    c = trig.noise(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)  # per generator
    assert a.min() >= 0 and a.max() <= 1
    d_noise, d_trig = (a - trig(x)).abs().mean(), (trig(x) - x).abs().mean()
    assert 0 < d_noise < 2 * d_trig  # near the backdoor warp, but not it
    # each sample its own offsets: the same image twice gets two different warps
    twice = trig.noise(torch.cat([x[:1], x[:1]]), torch.Generator().manual_seed(3))
    assert not torch.allclose(twice[0], twice[1])
