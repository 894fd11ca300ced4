"""The same parity checks on a CUDA device, where the fast paths use different kernels (flash /
memory-efficient attention, cuDNN convolutions). Run with ``pytest -m gpu`` on a machine with a GPU."""

import pytest
import torch

from repsuite.ops import (
    fused_leaky_relu,
    fused_leaky_relu_reference,
    modulated_conv2d,
    modulated_conv2d_reference,
    multi_head_attention,
    multi_head_attention_reference,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _grads(fn, *tensors, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves, **kw)
    out.float().square().sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_cuda_parity(dtype):
    torch.manual_seed(0)
    q = torch.randn(4, 8, 600, 32, device="cuda", dtype=dtype)
    k = torch.randn(4, 8, 32, 32, device="cuda", dtype=dtype)
    v = torch.randn(4, 8, 32, 32, device="cuda", dtype=dtype)
    mask = torch.zeros(4, 32, dtype=torch.bool, device="cuda")
    mask[1, 20:] = True
    mask[3] = True  # fully padded row
    fast = _grads(multi_head_attention, q, k, v, key_padding_mask=mask)
    ref = _grads(multi_head_attention_reference, q, k, v, key_padding_mask=mask)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 5e-2, "atol": 5e-2}
    for a, b in zip(fast, ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **tol)
    assert fast[0][3].abs().max() == 0


@pytest.mark.parametrize("formulation", ["grouped", "scaled"])
@pytest.mark.parametrize("up", [1, 2])
def test_modconv_cuda_parity(formulation, up):
    torch.manual_seed(0)
    x = torch.randn(4, 64, 16, 16, device="cuda")
    w = torch.randn(32, 64, 3, 3, device="cuda") / 24
    s = torch.randn(4, 64, device="cuda") + 1
    fast = _grads(modulated_conv2d, x, w, s, up=up, formulation=formulation)
    ref = _grads(modulated_conv2d_reference, x, w, s, up=up)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # TF32 convolutions


def test_fused_leaky_relu_cuda_bf16():
    x = torch.randn(2, 8, 16, 16, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8, device="cuda", dtype=torch.bfloat16)
    for a, c in zip(_grads(fused_leaky_relu, x, b), _grads(fused_leaky_relu_reference, x, b), strict=True):
        torch.testing.assert_close(a, c, rtol=2e-2, atol=2e-2)
