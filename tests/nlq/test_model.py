from dataclasses import replace

import pytest
import torch

from repsuite.nlq.model import NLQModel, NLQModelConfig, sine_encoding
from tests.conftest import ROOT

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
    assert out.npm_scores.shape == (3, k)
    assert out.segment_len.tolist() == [-(-40 // k), -(-30 // k), -(-40 // k)]  # each clip's own bins
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


def test_sine_encoding():
    p = sine_encoding(torch.arange(1, 11) / 10 * 2 * torch.pi, 8)  # positions 1..10 over (0, 2π]
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


def test_batch_segmentation_reproduces_the_release_split():
    """``segment_by="batch"`` gives what the release-style split (the padded batch cut into K) gave before
    the per-clip split existed: reference outputs written by that implementation, same seed and inputs."""
    ref = torch.load(ROOT / "tests/data/nlq_reference/segment_by_batch.pt", weights_only=True)
    torch.manual_seed(0)
    model = NLQModel(NLQModelConfig(video_dim=24, segment_by="batch", **SMALL)).eval()
    video, vpad, text, tpad = _batch()
    for k, want in ref.items():
        with torch.no_grad():
            out = model(video, vpad, text, tpad, num_segments=k)
        for name, value in want.items():
            torch.testing.assert_close(getattr(out, name), value, msg=f"K={k} {name}")


@pytest.mark.parametrize("k", [1, 3, 6])
def test_a_clips_prediction_never_depends_on_its_batch(k):
    model = NLQModel(NLQModelConfig(video_dim=24, **SMALL)).eval()
    video, vpad, text, tpad = _batch()  # clip 1 has 30 bins, padded to 40 by its neighbours
    with torch.no_grad():
        together = model(video, vpad, text, tpad, num_segments=k)
        alone = model(video[1:2, :30], vpad[1:2, :30], text[1:2], tpad[1:2], num_segments=k)
        batch_mode = NLQModel(replace(model.cfg, segment_by="batch"))
        batch_mode.load_state_dict(model.state_dict())
        shared = batch_mode.eval()(video, vpad, text, tpad, num_segments=k)
        own = batch_mode(video[1:2, :30], vpad[1:2, :30], text[1:2], tpad[1:2], num_segments=k)
    for name in ("start_logits", "end_logits", "highlight", "saliency"):
        torch.testing.assert_close(getattr(together, name)[1:2, :30], getattr(alone, name), msg=name)
    torch.testing.assert_close(together.npm_scores[1:2], alone.npm_scores)
    if k > 1:  # the release's split cuts the short clip by the batch's length, so its answer moves
        assert not torch.allclose(shared.start_logits[1:2, :30], own.start_logits, atol=1e-4)


def test_segment_layout_covers_every_bin_once():
    from repsuite.nlq.model import segment_layout

    vpad = torch.zeros(2, 10, dtype=torch.bool)
    vpad[1, 7:] = True
    lay = segment_layout(vpad, 3, "clip")
    assert lay.length.tolist() == [4, 3]  # ceil(10 / 3), ceil(7 / 3)
    for b, n in ((0, 10), (1, 7)):
        used = lay.gather[b][~lay.slot_pad[b]]
        assert sorted(used.tolist()) == list(range(n))  # each real bin in exactly one slot
        assert (lay.gather[b][lay.scatter[b, :n]] == torch.arange(n)).all()  # and found again


def test_token_zero_is_a_real_token_that_learns():
    """Id 0 is "!" in CLIP's BPE vocabulary: its embedding must get gradients (no padding_idx)."""
    import open_clip

    assert open_clip.get_tokenizer("ViT-B-16").decoder[0] == "!"
    model = NLQModel(NLQModelConfig(video_dim=24, **SMALL))
    video, vpad, text, tpad = _batch()
    text[0, 1] = 0  # a question with "!" in it
    out = model(video, vpad, text, tpad, num_segments=2)
    (out.start_logits.masked_fill(vpad, 0).sum() + out.text_proj.sum()).backward()
    assert model.text_encoder.embed.weight.grad[0].abs().sum() > 0


@pytest.mark.parametrize("attention", ["cross", "self"])
def test_encoding_once_for_several_scales_changes_nothing(attention):
    """``encode`` is the scale-independent part: passing it to ``forward`` gives the very same outputs."""
    model = NLQModel(NLQModelConfig(video_dim=24, attention=attention, **SMALL)).eval()
    video, vpad, text, tpad = _batch()
    with torch.no_grad():
        encoded = model.encode(video, text, tpad)
        assert encoded[0].shape == (3, 40, 32) and encoded[1].shape == (3, 9, 32)
        for k in (2, 5):
            full, shared = model(video, vpad, text, tpad, k), model(video, vpad, text, tpad, k, encoded)
            for name in ("start_logits", "end_logits", "highlight", "npm_scores", "video_proj", "text_proj"):
                assert torch.equal(getattr(full, name), getattr(shared, name)), (k, name)
    with pytest.raises(ValueError, match=r"expected video \(B, Lv, 24\)"):
        model.encode(video[..., :10], text, tpad)
