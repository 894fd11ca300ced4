import pytest
import torch

from repsuite.ops import (
    MultiHeadCrossAttention,
    multi_head_attention,
    multi_head_attention_reference,
    reference_ops,
)
from repsuite.ops import attention as attention_mod


def _qkv(b=2, h=4, lq=7, lk=5, d=8, dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(b, h, lk, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(b, h, lk, dv or d, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def _mask(b, lk, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, lk, generator=g) < 0.4
    m[:, 0] = False  # keep at least one valid key per row
    return m


def _grads(fn, q, k, v, **kw):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kw)
    g = torch.Generator().manual_seed(3)
    (out * torch.randn(out.shape, generator=g).to(out.dtype)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dv", [None, 12])
def test_fast_matches_reference_fp32(masked, dv):
    q, k, v = _qkv(dv=dv)
    kw = {"key_padding_mask": _mask(2, 5)} if masked else {}
    fast = _grads(multi_head_attention, q, k, v, **kw)
    ref = _grads(multi_head_attention_reference, q, k, v, **kw)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fast_matches_reference_bf16():
    q, k, v = _qkv(lq=33, lk=17, d=16, dtype=torch.bfloat16)
    m = _mask(2, 17)
    fast = _grads(multi_head_attention, q, k, v, key_padding_mask=m)
    ref = _grads(multi_head_attention_reference, q, k, v, key_padding_mask=m)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)


def test_matches_explicit_formula():
    q, k, v = _qkv(dtype=torch.float64)
    m = _mask(2, 5)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(m[:, None, None, :], float("-inf"))
    expected = scores.softmax(-1) @ v
    torch.testing.assert_close(multi_head_attention(q, k, v, key_padding_mask=m), expected)


def test_masked_keys_get_zero_weight():
    q, k, v = _qkv()
    m = _mask(2, 5)
    out = multi_head_attention(q, k, v, key_padding_mask=m)
    v2 = v.clone()
    v2[m[:, None, :, None].expand_as(v2)] = 1e6  # changing padded values must not change anything
    k2 = k.clone()
    k2[m[:, None, :, None].expand_as(k2)] = -3.0
    for fn in (multi_head_attention, multi_head_attention_reference):
        torch.testing.assert_close(fn(q, k2, v2, key_padding_mask=m), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [multi_head_attention, multi_head_attention_reference])
def test_fully_masked_row_gives_zeros_not_nan(fn):
    q, k, v = _qkv()
    m = torch.zeros(2, 5, dtype=torch.bool)
    m[1] = True  # every key of batch element 1 is padding
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, key_padding_mask=m)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isfinite(out).all()
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[1], torch.zeros_like(t.grad[1]))


@pytest.mark.parametrize("fn", [multi_head_attention, multi_head_attention_reference])
def test_query_chunking_is_exact(fn):
    q, k, v = _qkv(lq=50)
    m = _mask(2, 5)
    whole = _grads(fn, q, k, v, key_padding_mask=m, query_chunk_size=1000)
    chunked = _grads(fn, q, k, v, key_padding_mask=m, query_chunk_size=7)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_auto_chunking_kicks_in_for_long_queries(monkeypatch):
    calls = []
    real = attention_mod._fast

    def spy(q, *a):
        calls.append(q.shape[2])
        return real(q, *a)

    monkeypatch.setattr(attention_mod, "_fast", spy)
    monkeypatch.setattr(attention_mod, "FAST_SCORE_BUDGET_BYTES", 1 * 4 * 3 * 10 * 4)  # 10 queries per chunk
    q, k, v = _qkv(b=1, h=4, lq=35, lk=3)
    multi_head_attention(q, k, v)
    assert calls == [10, 10, 10, 5]


def test_auto_chunk_budgets():
    # reference path: a 100,000-row video against 32 tokens fits 64 MiB chunks of 65,536 queries
    assert attention_mod.auto_query_chunk_size(1, 8, 32) == 65536
    # a 100,032-row self-attention is cut into small pieces on the reference path...
    assert attention_mod.auto_query_chunk_size(1, 8, 100_032) == 20
    # ...and into ~300-query pieces on the fast path (bounds SDPA's math fallback)
    assert attention_mod.auto_query_chunk_size(1, 8, 100_032, fast=True) == 335
    # the NLQ co-attention shape is never chunked on the fast path
    assert attention_mod.auto_query_chunk_size(32, 8, 32, fast=True) >= 600


def test_switch_forces_reference(monkeypatch):
    called = []
    monkeypatch.setattr(attention_mod, "_reference", lambda *a: called.append(1) or attention_mod._fast(*a))
    q, k, v = _qkv()
    multi_head_attention(q, k, v)
    assert not called
    with reference_ops():
        multi_head_attention(q, k, v)
    assert called == [1]
    multi_head_attention(q, k, v)
    assert called == [1]


@pytest.mark.parametrize("fn", [multi_head_attention, multi_head_attention_reference])
def test_gradcheck_float64(fn):
    q, k, v = _qkv(b=1, h=2, lq=3, lk=4, d=3, dtype=torch.float64)
    m = torch.tensor([[False, True, False, False]])
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c, key_padding_mask=m), (q, k, v))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"q": torch.zeros(2, 4, 8)}, r"`q` must have shape \(B, H, L, Dh\), got \(2, 4, 8\)"),
        ({"k": torch.zeros(2, 4, 5, 9)}, "`q` and `k` must share Dh"),
        ({"v": torch.zeros(2, 4, 6, 8)}, "`k` and `v` must share Lk"),
        ({"k": torch.zeros(3, 4, 5, 8), "v": torch.zeros(3, 4, 5, 8)}, r"must agree on \(B, H\)"),
        ({"v": torch.zeros(2, 4, 5, 8, dtype=torch.float64)}, "must share a dtype"),
        ({"key_padding_mask": torch.zeros(2, 5)}, "must be a bool Tensor"),
        ({"key_padding_mask": torch.zeros(2, 6, dtype=torch.bool)}, r"\(B, Lk\) = \(2, 5\), got \(2, 6\)"),
        ({"dropout_p": 1.5}, "dropout_p"),
    ],
)
def test_bad_input_names_argument_and_shapes(kwargs, match):
    args = {"q": torch.zeros(2, 4, 7, 8), "k": torch.zeros(2, 4, 5, 8), "v": torch.zeros(2, 4, 5, 8)}
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k in ("key_padding_mask", "dropout_p")}
    args.update(kwargs)
    for fn in (multi_head_attention, multi_head_attention_reference):
        with pytest.raises(ValueError, match=match):
            fn(args["q"], args["k"], args["v"], **extra)


def test_module_cross_attention_shapes_and_parity():
    torch.manual_seed(0)
    attn = MultiHeadCrossAttention(dim=32, num_heads=4, context_dim=24).eval()
    x, ctx = torch.randn(3, 11, 32), torch.randn(3, 6, 24)
    m = torch.zeros(3, 6, dtype=torch.bool)
    m[0, 4:] = True
    out = attn(x, ctx, key_padding_mask=m)
    assert out.shape == (3, 11, 32)
    with reference_ops():
        ref = attn(x, ctx, key_padding_mask=m)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_module_bad_input():
    attn = MultiHeadCrossAttention(dim=16, num_heads=4)
    with pytest.raises(ValueError, match=r"`x` must be \(B, Lq, 16\), got \(2, 5, 12\)"):
        attn(torch.zeros(2, 5, 12), torch.zeros(2, 3, 16))
    with pytest.raises(ValueError, match=r"`context` must be \(2, Lk, 16\)"):
        attn(torch.zeros(2, 5, 16), torch.zeros(3, 3, 16))
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadCrossAttention(dim=10, num_heads=4)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    attn = MultiHeadCrossAttention(dim=16, num_heads=2, dropout=0.5)
    x, ctx = torch.randn(2, 9, 16), torch.randn(2, 7, 16)
    attn.eval()
    assert torch.equal(attn(x, ctx), attn(x, ctx))
    attn.train()
    assert not torch.equal(attn(x, ctx), attn(x, ctx))


def _explicit_with_mask(q, k, v, key_padding_mask, keep, p):
    """softmax(QKᵀ/√d) with padding, times a given dropout mask / (1 − p'), times V (the textbook form)."""
    from repsuite.ops.drop import quantised_drop_probability

    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) * keep / (1 - quantised_drop_probability(p))) @ v


@pytest.mark.parametrize("budget", [None, 4 * 13 * 3, 8])  # one block; query blocks of 3; one query per block
def test_blocked_dropout_attention_matches_explicit_formula(monkeypatch, budget):
    if budget is not None:
        monkeypatch.setattr(attention_mod, "BLOCK_SCORE_BYTES", budget)
    q, k, v = _qkv(b=3, h=2, lq=11, lk=13, d=8, dv=6, dtype=torch.float64)
    pad = _mask(3, 13)
    keep = torch.rand(3, 2, 11, 13, generator=torch.Generator().manual_seed(5)) > 0.3
    assert len(attention_mod._blocks(6, 11, 13)) == {None: 1, 4 * 13 * 3: 24, 8: 66}[budget]
    got = _grads(attention_mod.dropout_attention, q, k, v, attn_mask=(~pad)[:, None, None, :],
                 dropout_p=0.3, keep=keep)  # fmt: skip
    want = _grads(_explicit_with_mask, q, k, v, key_padding_mask=pad, keep=keep, p=0.3)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_blocked_dropout_attention_bf16_close_to_float64():
    q, k, v = _qkv(b=2, h=2, lq=40, lk=24, d=16, dtype=torch.float64)
    pad = _mask(2, 24)
    keep = torch.rand(2, 2, 40, 24, generator=torch.Generator().manual_seed(5)) > 0.1
    got = _grads(attention_mod.dropout_attention, *(t.bfloat16() for t in (q, k, v)),
                 attn_mask=(~pad)[:, None, None, :], dropout_p=0.1, keep=keep)  # fmt: skip
    want = _grads(_explicit_with_mask, q, k, v, key_padding_mask=pad, keep=keep, p=0.1)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), b, rtol=5e-2, atol=5e-2)


def test_blocked_dropout_attention_draws_a_fair_seeded_mask():
    # q = k = 0: every key weighs 1/Lk, so with V = 1 each output is (kept keys / Lk) / (1 − p')
    q = torch.zeros(2, 4, 64, 8)
    v = torch.ones(2, 4, 256, 8)
    torch.manual_seed(0)
    out = attention_mod.dropout_attention(q, torch.zeros(2, 4, 256, 8), v, None, 0.25)
    kept = out[..., 0] * 0.75  # fraction of kept keys per query row
    assert abs(kept.mean().item() - 0.75) < 0.01  # 32,768 row draws of 256 keys each
    assert kept.std().item() > 0.01  # rows differ: a real mask, not a constant scale
    torch.manual_seed(0)
    assert torch.equal(out, attention_mod.dropout_attention(q, torch.zeros(2, 4, 256, 8), v, None, 0.25))


def test_training_attention_on_cpu_takes_the_blocked_kernel(monkeypatch):
    calls = []
    real = attention_mod.dropout_attention
    monkeypatch.setattr(
        attention_mod, "dropout_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    q, k, v = _qkv()
    multi_head_attention(q, k, v, key_padding_mask=_mask(2, 5), dropout_p=0.1)
    assert calls == [1]
    multi_head_attention(q, k, v, key_padding_mask=_mask(2, 5), dropout_p=0.0)  # no dropout: SDPA
    assert calls == [1]
