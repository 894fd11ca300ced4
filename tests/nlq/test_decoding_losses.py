import math

import pytest
import torch

from repsuite.nlq.decoding import joint_topk, joint_topk_dense, merge_candidates, temporal_nms
from repsuite.nlq.losses import ContrastiveLoss, HighlightLoss, NLQLoss, NPMLoss, SaliencyLoss, gt_mask
from repsuite.nlq.model import NLQOutput


def test_joint_topk_matches_brute_force():
    torch.manual_seed(0)
    s, e = torch.randn(2, 7), torch.randn(2, 7)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    starts, ends, scores = joint_topk(s, e, pad, k=5)
    for b in range(2):
        n = 7 if b == 0 else 5
        ps, pe = s[b, :n].softmax(0), e[b, :n].softmax(0)
        cells = sorted(((ps[i] * pe[j]).item(), i, j) for i in range(n) for j in range(i, n))[::-1][:5]
        assert [(i, j) for _, i, j in cells] == list(zip(starts[b].tolist(), ends[b].tolist(), strict=True))
        assert scores[b].tolist() == pytest.approx([c for c, _, _ in cells])
    assert (starts <= ends).all()


def test_joint_topk_max_span():
    s = torch.tensor([[5.0, 0, 0, 0, 0, 0]])
    e = torch.tensor([[0, 0, 0, 0, 0, 5.0]])
    starts, ends, _ = joint_topk(s, e, torch.zeros(1, 6, dtype=torch.bool), k=3, max_span=3)
    assert ((ends - starts) < 3).all()


@pytest.mark.parametrize("length", [1, 2, 3, 9, 64, 300])
@pytest.mark.parametrize("max_span", [None, 1, 4])
@pytest.mark.parametrize("rows_per_chunk", [1, 7, 256])
def test_joint_topk_without_the_square_equals_the_dense_decoder(length, max_span, rows_per_chunk):
    g = torch.Generator().manual_seed(length * 31 + (max_span or 0))
    s, e = torch.randn(4, length, generator=g) * 3, torch.randn(4, length, generator=g) * 3
    pad = torch.zeros(4, length, dtype=torch.bool)
    pad[1, length // 2 + 1 :] = True  # shorter clips of the batch
    pad[2, 1:] = True
    for k in (1, 5, 20):
        want = joint_topk_dense(s, e, pad, k, max_span)
        got = joint_topk(s, e, pad, k, max_span, rows_per_chunk=rows_per_chunk)
        real = want[2] >= 0  # slots beyond a clip's valid cells (score −1) carry no window
        assert torch.equal(got[2] >= 0, real)
        for w, g_ in zip(want, got, strict=True):
            assert torch.equal(w[real], g_[real])


def test_merge_candidates_dedup_and_nms():
    w = torch.tensor([[[0.0, 2.0], [0.0, 2.0], [0.1, 2.1], [5.0, 6.0], [9.0, 9.5]]], dtype=torch.float64)
    s = torch.tensor([[0.9, 0.8, 0.7, 0.6, -1.0]])
    out, sc = merge_candidates(w, s, k=3)
    assert out[0].tolist() == [[0.0, 2.0], [0.0, 2.0], [0.1, 2.1]]
    out, sc = merge_candidates(w, s, k=3, deduplicate=True)
    assert out[0].tolist() == [[0.0, 2.0], [0.1, 2.1], [5.0, 6.0]]
    out, sc = merge_candidates(w, s, k=3, nms_iou=0.5)
    assert (
        out[0, :2].tolist() == [[0.0, 2.0], [5.0, 6.0]] and sc[0, 2] == -1.0
    )  # absent candidate stays absent
    assert temporal_nms(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([1.0, 0.5]), 0.9).tolist() == [
        True,
        False,
    ]


def _out(b=2, lv=10, k=2, seg=5, lt=4, c=8):
    torch.manual_seed(0)
    logits = torch.randn(b, lv)
    return NLQOutput(
        start_logits=logits.clone().requires_grad_(True),
        end_logits=torch.randn(b, lv).requires_grad_(True),
        highlight=torch.randn(b, lv).requires_grad_(True),
        saliency=torch.randn(b, lv).requires_grad_(True),
        npm_scores=torch.rand(b, k).requires_grad_(True),
        segment_valid=torch.ones(b, k, dtype=torch.bool),
        segment_len=torch.full((b,), seg),
        video_proj=torch.nn.functional.normalize(torch.randn(b, lv, c), dim=-1),
        text_proj=torch.nn.functional.normalize(torch.randn(b, lt, c), dim=-1),
    )


def test_gt_mask_extension():
    m = gt_mask(torch.tensor([4]), torch.tensor([13]), 20, extend=0.1)
    assert m[0].nonzero().flatten().tolist() == list(range(3, 15))


def test_npm_labels_follow_start_and_end_segments():
    out = _out()
    out.npm_scores = torch.tensor([[0.999999, 0.000001], [0.5, 0.5]])
    start, end = torch.tensor([1, 2]), torch.tensor([3, 7])  # clip 0: only segment 0; clip 1: both
    loss = NPMLoss()(out, start, end, torch.zeros(2, 10, dtype=torch.bool))
    expected = (0 + 0 + 2 * math.log(2) + 2 * math.log(2)) / (2 + 1 + 2 + 2)
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_npm_labels_every_segment_the_answer_overlaps_unless_told_the_release_rule():
    out = _out(b=1, lv=20, k=4, seg=5)
    eps = 1e-6
    out.npm_scores = torch.tensor([[eps, 1 - eps, 1 - eps, 1 - eps]])  # says: segments 1-3 hold the answer
    start, end, pad = torch.tensor([6]), torch.tensor([17]), torch.zeros(1, 20, dtype=torch.bool)
    assert NPMLoss()(out, start, end, pad).item() < 1e-4  # Eq. 2.5: 1, 2 and 3 intersect bins 6-17
    # the release labels only the start (1) and end (3) segments: segment 2, inside the answer, is "wrong"
    release = NPMLoss(label="start_end")(out, start, end, pad).item()
    assert release == pytest.approx(-math.log(eps) / (1 + 2 + 1 + 2), rel=1e-3)


def test_contrastive_loss_prefers_aligned_frames():
    out = _out(b=1, lv=6, lt=1, c=2)
    text = torch.tensor([[[1.0, 0.0]]])
    good = torch.tensor([[[-1.0, 0.0]] * 2 + [[1.0, 0.0]] * 2 + [[-1.0, 0.0]] * 2])
    out.text_proj = text
    out.video_proj = good
    start, end, pad = torch.tensor([2]), torch.tensor([3]), torch.zeros(1, 6, dtype=torch.bool)
    low = ContrastiveLoss()(out, start, end, pad, torch.zeros(1, 1, dtype=torch.bool))
    out.video_proj = -good
    high = ContrastiveLoss()(out, start, end, pad, torch.zeros(1, 1, dtype=torch.bool))
    assert low < 1e-6 < high
    # hand value: F+ = 1/τ, four negatives at -1/τ
    tau = 0.07
    assert low.item() == pytest.approx(
        -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 4 * math.exp(-1 / tau))), abs=1e-6
    )


def test_saliency_and_highlight_signs():
    out = _out(b=1, lv=10)
    start, end, pad = torch.tensor([3]), torch.tensor([5]), torch.zeros(1, 10, dtype=torch.bool)
    out.saliency = torch.full((1, 10), -1.0)
    out.saliency[0, 3:6] = 1.0
    assert SaliencyLoss()(out, start, end, pad).item() == 0.0
    out.saliency = -out.saliency
    assert SaliencyLoss()(out, start, end, pad).item() == pytest.approx(2.2)
    out.highlight = torch.full((1, 10), -20.0)
    out.highlight[0, 3:6] = 20.0
    assert HighlightLoss(extend=0.0)(out, start, end, pad).item() < 1e-6


def test_total_loss_terms_and_backward():
    out = _out()
    batch = {
        "start": torch.tensor([1, 6]),
        "end": torch.tensor([3, 8]),
        "video_padding_mask": torch.zeros(2, 10, dtype=torch.bool),
        "text_padding_mask": torch.zeros(2, 4, dtype=torch.bool),
    }
    terms = NLQLoss()(out, batch)
    assert set(terms) == {"loss", "span", "highlight", "saliency", "npm", "contrastive"}
    manual = terms["span"] + 20 * terms["highlight"] + terms["saliency"] + terms["npm"] + terms["contrastive"]
    assert terms["loss"].item() == pytest.approx(manual.item())
    terms["loss"].backward()
    no_contra = NLQLoss(contrastive=0.0)(_out(), batch)
    assert "contrastive" not in no_contra
    batch["start"] = torch.tensor([-1, 6])
    with pytest.raises(ValueError, match="without ground truth"):
        NLQLoss()(_out(), batch)
