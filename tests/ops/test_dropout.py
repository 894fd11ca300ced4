import pytest
import torch
import torch.nn.functional as F

from repsuite.ops import (
    Dropout,
    dropout,
    dropout_reference,
    multi_head_attention,
    quantised_drop_probability,
    reference_ops,
)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fast_dropout_drops_at_the_rate_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.rand(400, 1000) + 0.5
    out = dropout(x, p)
    kept = out != 0
    q = quantised_drop_probability(p)
    assert abs(q - p) <= 2**-17
    n = x.numel()
    # binomial: 5 standard deviations of the kept fraction
    assert abs(kept.float().mean().item() - (1 - q)) < 5 * ((q * (1 - q)) / n) ** 0.5
    torch.testing.assert_close(out[kept], x[kept] / (1 - q))  # kept values scaled, exactly
    # unbiased: the mean's relative error within 6 standard deviations of the masking noise
    assert abs(out.mean().item() / x.mean().item() - 1) < 6 * (q / ((1 - q) * n)) ** 0.5
    # the 16-bit words are independent: neighbours are kept together at rate (1 - q)^2
    pair = (kept[:, ::2] & kept[:, 1::2]).float().mean().item()
    assert abs(pair - (1 - q) ** 2) < 0.01


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    out = dropout(x, 0.3)
    g = torch.randn_like(out)
    out.backward(g)
    kept = out.detach() != 0
    q = quantised_drop_probability(0.3)
    torch.testing.assert_close(x.grad, torch.where(kept, g / (1 - q), 0.0))


def test_fast_dropout_is_seeded_and_edge_cases_match_f_dropout():
    x = torch.randn(3, 50)
    torch.manual_seed(5)
    a = dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(x, 0.2))
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(torch.empty(0, 4), 0.5).shape == (0, 4)
    with reference_ops():  # the reference switch gives F.dropout's own stream
        torch.manual_seed(5)
        ref = dropout(x, 0.2)
    torch.manual_seed(5)
    assert torch.equal(ref, F.dropout(x, 0.2))
    torch.manual_seed(5)
    assert torch.equal(ref, dropout_reference(x, 0.2))
    with pytest.raises(ValueError, match="`p` must be in"):
        dropout(x, 1.5)
    with pytest.raises(ValueError, match="floating-point"):
        dropout(torch.ones(3, dtype=torch.long), 0.1)


def test_dropout_module_follows_train_and_eval_and_keeps_state_dicts():
    layer = Dropout(0.5)
    assert isinstance(layer, torch.nn.Dropout) and layer.state_dict() == {}
    x = torch.ones(1000)
    assert (layer(x) == 0).any()
    layer.eval()
    assert torch.equal(layer(x), x)
    x = torch.ones(1000)
    Dropout(0.5, inplace=True)(x)
    assert (x == 0).any()  # in place, as nn.Dropout(inplace=True)


def test_bf16_dropout_keeps_its_dtype():
    x = torch.randn(10, 100, dtype=torch.bfloat16, requires_grad=True)
    out = dropout(x, 0.25)
    out.sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16


def test_attention_with_dropout_averages_to_the_attention_without_it():
    # the fast path's CPU dropout (explicit maths, repsuite's mask) against SDPA without dropout: the
    # dropped-out attention is unbiased, so the mean over many draws converges to the plain output
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    plain = multi_head_attention(q, k, v, key_padding_mask=pad)
    draws = torch.stack(
        [multi_head_attention(q, k, v, key_padding_mask=pad, dropout_p=0.3) for _ in range(3000)]
    )
    torch.testing.assert_close(draws.mean(0), plain, atol=0.06, rtol=0)
    # padded keys stay at zero weight: values behind padding never leak, with or without dropout
    v_leak = v.clone()
    v_leak[1, :, 3:] = 1e6
    out = multi_head_attention(q, k, v_leak, key_padding_mask=pad, dropout_p=0.3)
    assert out.abs().max() < 1e3
