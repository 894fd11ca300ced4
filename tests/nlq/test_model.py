import pytest
import torch

from repsuite.nlq.model import NLQModel, NLQModelConfig, sine_positions

SMALL = {
    "hidden": 32,
    "num_heads": 4,
    "ffn": 64,
    "num_layers": 2,
    "span_layers": 1,
    "text_encoder_layers": 1,
    "max_video_len": 64,
    "contrast_dim": 8,
}


def _batch(b=3, lv=40, lt=9, dv=24, ids=True):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(b, lv, dv, generator=g)
    vpad = torch.zeros(b, lv, dtype=torch.bool)
    vpad[1, 30:] = True
    text = torch.randint(1, 1000, (b, lt), generator=g) if ids else torch.randn(b, lt, 12, generator=g)
    tpad = torch.zeros(b, lt, dtype=torch.bool)
    tpad[2, 5:] = True
    return video, vpad, text, tpad


@pytest.mark.parametrize("attention", ["cross", "self"])
@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_shapes_and_padding(attention, k):
    model = NLQModel(NLQModelConfig(video_dim=24, attention=attention, **SMALL)).eval()
    video, vpad, text, tpad = _batch()
    out = model(video, vpad, text, tpad, num_segments=k)
    assert out.start_logits.shape == (3, 40) and out.end_logits.shape == (3, 40)
    assert out.highlight.shape == (3, 40) and out.saliency.shape == (3, 40)
    assert out.npm_scores.shape == (3, k) and out.segment_len == -(-40 // k)
    assert out.video_proj.shape == (3, 40, 8) and out.text_proj.shape == (3, 9, 8)
    assert torch.isfinite(out.start_logits[~vpad]).all()
    assert (out.start_logits[1, 30:] < -1e30).all()  # padding can never be chosen
    assert ((out.npm_scores >= 0) & (out.npm_scores <= 1)).all()


def test_text_features_mode_and_errors():
    model = NLQModel(NLQModelConfig(video_dim=24, text_dim=12, **SMALL))
    video, vpad, text, tpad = _batch(ids=False)
    assert model(video, vpad, text, tpad, 3).start_logits.shape == (3, 40)
    with pytest.raises(ValueError, match=r"expected text features \(B, Lt, 12\)"):
        model(video, vpad, torch.randint(0, 5, (3, 9)), tpad, 3)
    with pytest.raises(ValueError, match=r"expected video \(B, Lv, 24\)"):
        model(video[..., :20], vpad, text, tpad, 3)
    ids_model = NLQModel(NLQModelConfig(video_dim=24, **SMALL))
    with pytest.raises(ValueError, match="built for token ids"):
        ids_model(video, vpad, text, tpad, 3)
    with pytest.raises(ValueError, match="exceed max_video_len=64"):
        ids_model(
            torch.randn(1, 80, 24),
            torch.zeros(1, 80, dtype=torch.bool),
            torch.ones(1, 3).long(),
            torch.zeros(1, 3, dtype=torch.bool),
            2,
        )


def test_every_parameter_gets_a_gradient():
    model = NLQModel(NLQModelConfig(video_dim=24, **SMALL))
    video, vpad, text, tpad = _batch()
    out = model(video, vpad, text, tpad, 3)
    valid = ~vpad
    loss = (
        out.start_logits[valid].sum()
        + out.end_logits[valid].sum()
        + out.highlight.sum()
        + out.saliency.sum()
        + out.npm_scores.sum()
        + (out.video_proj.sum() + out.text_proj.sum())
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_text_changes_the_answer():
    """The question must matter: different text gives different start logits (cross-modal fusion works)."""
    torch.manual_seed(0)
    model = NLQModel(NLQModelConfig(video_dim=24, **SMALL)).eval()
    video, vpad, text, tpad = _batch()
    a = model(video, vpad, text, tpad, 2).start_logits
    b = model(video, vpad, text.flip(1), tpad, 2).start_logits
    assert not torch.allclose(a[~vpad], b[~vpad])


def test_sine_positions():
    p = sine_positions(10, 8, torch.device("cpu"), torch.float32)
    assert p.shape == (10, 8) and torch.all(p.abs() <= 1)


def test_npm_normalisation_scales_segments_by_the_best_one():
    torch.manual_seed(0)
    video, vpad, text, tpad = _batch()
    raw = NLQModel(NLQModelConfig(video_dim=24, **SMALL)).eval()
    norm = NLQModel(NLQModelConfig(video_dim=24, npm_normalize=True, **SMALL)).eval()
    norm.load_state_dict(raw.state_dict())
    a, b = raw(video, vpad, text, tpad, 3), norm(video, vpad, text, tpad, 3)
    torch.testing.assert_close(a.npm_scores, b.npm_scores)  # same scores, different re-weighting
    assert not torch.allclose(a.highlight, b.highlight)
