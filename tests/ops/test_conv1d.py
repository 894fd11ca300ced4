import pytest
import torch

from repsuite.ops import depthwise_conv1d, depthwise_conv1d_reference, reference_ops


def _inputs(b=3, length=17, dim=6, k=7, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, dim, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(dim, 1, k, generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(dim, generator=g, dtype=torch.float64).to(dtype)
    return x, w, bias


def _grads(fn, x, w, bias):
    x, w, bias = (t.detach().clone().requires_grad_(True) for t in (x, w, bias))
    out = fn(x, w, bias)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype)).sum().backward()
    return out.detach(), x.grad, w.grad, bias.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_fast_matches_reference_and_nn_conv1d(dtype, k):
    x, w, bias = _inputs(k=k, dtype=dtype)
    fast, ref = _grads(depthwise_conv1d, x, w, bias), _grads(depthwise_conv1d_reference, x, w, bias)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b)
    conv = torch.nn.Conv1d(6, 6, k, padding=k // 2, groups=6).to(dtype)
    conv.weight.data, conv.bias.data = w, bias
    torch.testing.assert_close(fast[0], conv(x.transpose(1, 2)).transpose(1, 2).detach())


def test_fast_output_is_a_plain_b_l_d_tensor_and_bf16_works():
    x, w, bias = _inputs(b=2, length=64, dim=32)
    out = depthwise_conv1d(x, w, bias)
    assert out.shape == (2, 64, 32) and out.is_contiguous()  # no copy needed by what follows
    got = depthwise_conv1d(x.bfloat16(), w.bfloat16(), bias.bfloat16())
    torch.testing.assert_close(got.float(), out, rtol=5e-2, atol=5e-2)


def test_non_contiguous_input_and_switch():
    x, w, bias = _inputs()
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    torch.testing.assert_close(depthwise_conv1d(xt, w, bias), depthwise_conv1d_reference(x, w, bias))
    with reference_ops():
        torch.testing.assert_close(depthwise_conv1d(x, w, None), depthwise_conv1d_reference(x, w, None))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(2, 5), torch.randn(5, 1, 3), None), r"`x` must be \(B, L, D\)"),
        ((torch.randn(2, 4, 5), torch.randn(5, 1, 4), None), r"K odd"),
        ((torch.randn(2, 4, 5), torch.randn(6, 1, 3), None), r"`weight` must be \(5, 1, K\)"),
        ((torch.randn(2, 4, 5), torch.randn(5, 1, 3), torch.randn(4)), r"`bias` must be \(5,\)"),
    ],
)
def test_bad_input_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        depthwise_conv1d(*args)
