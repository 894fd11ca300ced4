import math

import pytest
import torch
import torch.nn.functional as F

from repsuite.ops import (
    choose_formulation,
    fused_leaky_relu,
    fused_leaky_relu_reference,
    modulated_conv2d,
    modulated_conv2d_reference,
    modulated_weight,
    reference_ops,
)


def _inputs(b=3, cin=5, cout=4, hw=8, k=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cin, hw, hw, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(cout, cin, k, k, generator=g, dtype=torch.float64) / math.sqrt(cin * k * k)).to(dtype)
    s = (torch.randn(b, cin, generator=g, dtype=torch.float64) + 1.0).to(dtype)
    return x, w, s


def _run(fn, x, w, s, **kw):
    x, w, s = (t.detach().clone().requires_grad_(True) for t in (x, w, s))
    out = fn(x, w, s, **kw)
    g = torch.Generator().manual_seed(9)
    (out * torch.randn(out.shape, generator=g).to(out.dtype)).sum().backward()
    return out.detach(), x.grad, w.grad, s.grad


def _gfpgan_style(x, w, s, demodulate, eps, sample_mode):
    """The clean StyleGAN2 op as GFPGAN writes it (grouped conv), written out for comparison."""
    b, c, _, _ = x.shape
    weight = w[None] * s.view(b, 1, c, 1, 1)
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + eps).view(b, -1, 1, 1, 1)
    if sample_mode == "upsample":
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    elif sample_mode == "downsample":
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    out = F.conv2d(
        x.reshape(1, -1, *x.shape[2:]),
        weight.reshape(-1, c, *w.shape[2:]),
        padding=w.shape[-1] // 2,
        groups=b,
    )
    return out.view(b, -1, *out.shape[2:])


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("demodulate", [True, False])
def test_reference_matches_gfpgan_clean_definition(up, down, demodulate):
    x, w, s = _inputs(dtype=torch.float64)
    mode = "upsample" if up == 2 else "downsample" if down == 2 else None
    expected = _gfpgan_style(x, w, s, demodulate, 1e-8, mode)
    got = modulated_conv2d_reference(x, w, s, demodulate=demodulate, up=up, down=down)
    torch.testing.assert_close(got, expected)
    assert got.shape == (3, 4, 8 * up // down, 8 * up // down)


@pytest.mark.parametrize("formulation", ["grouped", "scaled", "auto"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_fast_matches_reference_fp32(formulation, up, down, demodulate, k):
    x, w, s = _inputs(k=k)
    fast = _run(modulated_conv2d, x, w, s, demodulate=demodulate, up=up, down=down, formulation=formulation)
    ref = _run(modulated_conv2d_reference, x, w, s, demodulate=demodulate, up=up, down=down)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("formulation", ["grouped", "scaled"])
def test_fast_matches_reference_bf16(formulation):
    x, w, s = _inputs(b=2, cin=16, cout=8, hw=8, dtype=torch.bfloat16)
    fast = _run(modulated_conv2d, x, w, s, formulation=formulation)
    ref = _run(modulated_conv2d_reference, x, w, s)
    for a, b in zip(fast, ref, strict=True):
        scale = b.float().abs().max().item()
        torch.testing.assert_close(a.float(), b.float(), rtol=6e-2, atol=3e-2 * scale)


@pytest.mark.parametrize("fn", [modulated_conv2d, modulated_conv2d_reference])
def test_autocast_casts_mixed_inputs_like_a_convolution(fn):
    """In a layer under bf16 autocast the weight is a float32 parameter and x / style come out in bf16."""
    x, w, s = _inputs(b=2, cin=16, cout=8, hw=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(x.bfloat16(), w, s.bfloat16())
        also = fn(x, w, s)  # all float32 in: still the autocast dtype out, as F.conv2d
    want = fn(x.bfloat16(), w.bfloat16(), s.bfloat16())
    assert got.dtype == also.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="must share a dtype"):  # outside autocast a mix is still an error
        fn(x.bfloat16(), w, s)


def test_padding_argument():
    x, w, s = _inputs()
    for fn in (modulated_conv2d, modulated_conv2d_reference):
        assert fn(x, w, s, padding=0).shape == (3, 4, 6, 6)


@pytest.mark.parametrize("formulation", ["grouped", "scaled"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_gradcheck_float64(formulation, up, down):
    x, w, s = _inputs(b=2, cin=2, cout=2, hw=4, dtype=torch.float64)
    args = tuple(t.requires_grad_(True) for t in (x, w, s))
    assert torch.autograd.gradcheck(
        lambda a, b, c: modulated_conv2d(a, b, c, up=up, down=down, formulation=formulation), args
    )


def test_gradcheck_reference_float64():
    x, w, s = _inputs(b=2, cin=2, cout=2, hw=4, dtype=torch.float64)
    args = tuple(t.requires_grad_(True) for t in (x, w, s))
    assert torch.autograd.gradcheck(lambda a, b, c: modulated_conv2d_reference(a, b, c, up=2), args)


def test_switch_forces_reference(monkeypatch):
    from repsuite.ops import modconv

    calls = []
    monkeypatch.setattr(modconv, "modulated_conv2d_reference", lambda *a, **k: calls.append(1) or a[0])
    x, w, s = _inputs()
    modulated_conv2d(x, w, s)
    assert calls == []
    with reference_ops():
        modulated_conv2d(x, w, s)
    assert calls == [1]


def test_choose_formulation():
    # the StyleGAN2-512 layers measured in benchmarks/ops.py
    assert choose_formulation((4, 512, 32, 32), (512, 512, 3, 3)) == "scaled"
    assert choose_formulation((4, 512, 32, 32), (512, 512, 3, 3), up=2) == "scaled"
    assert choose_formulation((4, 256, 128, 128), (256, 256, 3, 3)) == "grouped"
    assert choose_formulation((4, 64, 512, 512), (64, 64, 3, 3)) == "grouped"
    assert choose_formulation((1, 512, 4, 4), (512, 512, 3, 3)) == "scaled"


@pytest.mark.parametrize(
    ("x", "w", "s", "kw", "match"),
    [
        (
            torch.zeros(2, 5, 8),
            torch.zeros(4, 5, 3, 3),
            torch.zeros(2, 5),
            {},
            r"`x` must be a float tensor \(B, C_in, H, W\), got \(2, 5, 8\)",
        ),
        (
            torch.zeros(2, 5, 8, 8),
            torch.zeros(4, 6, 3, 3),
            torch.zeros(2, 5),
            {},
            "`weight` has C_in=6 but `x` has C_in=5",
        ),
        (
            torch.zeros(2, 5, 8, 8),
            torch.zeros(4, 5, 3, 3),
            torch.zeros(2, 4),
            {},
            r"`style` must be \(B, C_in\) = \(2, 5\), got \(2, 4\)",
        ),
        (
            torch.zeros(2, 5, 8, 8),
            torch.zeros(4, 5, 3, 3),
            torch.zeros(2, 5),
            {"up": 2, "down": 2},
            "not both 2",
        ),
        (torch.zeros(2, 5, 8, 8), torch.zeros(4, 5, 3, 3), torch.zeros(2, 5), {"up": 4}, "must be 1 or 2"),
        (
            torch.zeros(2, 5, 8, 8),
            torch.zeros(4, 5, 3, 3, dtype=torch.float64),
            torch.zeros(2, 5),
            {},
            "share a dtype",
        ),
        (torch.zeros(2, 5, 8, 8), torch.zeros(4, 5, 3, 2), torch.zeros(2, 5), {}, "kernel must be square"),
    ],
)
def test_modconv_bad_input(x, w, s, kw, match):
    for fn in (modulated_conv2d, modulated_conv2d_reference):
        with pytest.raises(ValueError, match=match):
            fn(x, w, s, **kw)
    with pytest.raises(ValueError, match="formulation"):
        modulated_conv2d(*_inputs(), formulation="winograd")


# ----------------------------------------------------------------------------------------------- flrelu


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 5, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_matches_reference(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_(True)
    b = torch.randn(4, generator=g).requires_grad_(True) if with_bias else None
    outs = []
    for fn in (fused_leaky_relu, fused_leaky_relu_reference):
        xx = x.detach().clone().requires_grad_(True)
        bb = b.detach().clone().requires_grad_(True) if b is not None else None
        y = fn(xx, bb)
        y.pow(2).sum().backward()
        outs.append((y.detach(), xx.grad, bb.grad if bb is not None else None))
    for a, c in zip(*outs, strict=True):
        if a is None:
            assert c is None
        else:
            torch.testing.assert_close(a, c)
    expected = F.leaky_relu(
        x + (b.view(1, -1, *[1] * (len(shape) - 2)) if b is not None else 0), 0.2
    ) * math.sqrt(2)
    torch.testing.assert_close(outs[0][0], expected.detach())


def test_fused_leaky_relu_bf16_and_custom_params():
    x = torch.randn(2, 3, 4, 4)
    b = torch.randn(3)
    got = fused_leaky_relu(x.bfloat16(), b, negative_slope=0.1, scale=2.0)
    ref = fused_leaky_relu_reference(x, b, negative_slope=0.1, scale=2.0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def test_fused_leaky_relu_gradcheck_and_double_backward():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    x = x + 0.05 * torch.sign(x)  # keep values away from the kink
    x.requires_grad_(True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fused_leaky_relu, (x, b))
    assert torch.autograd.gradgradcheck(fused_leaky_relu, (x, b))
    # R1-style penalty: gradient of a gradient w.r.t. a downstream weight
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for fn in (fused_leaky_relu, fused_leaky_relu_reference):
        out = (fn(x * w.view(1, 3, 1, 1), b) ** 2).sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.pow(2).sum(), w)
        if fn is fused_leaky_relu:
            first = gw
        else:
            torch.testing.assert_close(first, gw)


def test_fused_leaky_relu_bad_input():
    for fn in (fused_leaky_relu, fused_leaky_relu_reference):
        with pytest.raises(ValueError, match=r"`bias` must be \(C,\) = \(4,\), got \(3,\)"):
            fn(torch.zeros(2, 4, 3), torch.zeros(3))
        with pytest.raises(ValueError, match="negative_slope"):
            fn(torch.zeros(2, 4), None, negative_slope=-1.0)


def test_modulated_weight_is_the_kernel_the_reference_applies_per_sample():
    torch.manual_seed(0)
    x, weight, style = torch.randn(3, 8, 6, 6), torch.randn(5, 8, 3, 3), torch.randn(3, 8)
    for demodulate in (True, False):
        kernels = modulated_weight(weight, style, demodulate=demodulate)  # (3, 5, 8, 3, 3)
        got = torch.cat([F.conv2d(x[b : b + 1], kernels[b], padding=1) for b in range(3)])
        want = modulated_conv2d_reference(x, weight, style, demodulate=demodulate)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
