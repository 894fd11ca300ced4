"""Training losses of the NLQ model (thesis Eq. 2.5, 2.8–2.9, 2.11, 2.13–2.15), each with its own weight.

Defaults follow the author's release (shared/reference/nlq.md §3.1): span CE 1, highlight weighted BCE 20
(positives ×2, GT extended by 10% of its length on each side), saliency hinge 1 (margin 0.2, 2 positive /
2 negative bins), NPM weighted BCE 1 (positives ×2), frame contrastive InfoNCE 1 (τ = 0.07).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsuite.nlq.model import NLQOutput

__all__ = ["ContrastiveLoss", "HighlightLoss", "NLQLoss", "NPMLoss", "SaliencyLoss", "SpanLoss", "gt_mask"]


def gt_mask(start: Tensor, end: Tensor, length: int, extend: float = 0.0) -> Tensor:
    """(B, L) bool, True on bins [start − x, end + x] with x = round(extend · (end − start + 1))."""
    idx = torch.arange(length, device=start.device)[None, :]  # (1, L)
    x = torch.round(extend * (end - start + 1).float()).long() if extend else torch.zeros_like(start)
    return (idx >= (start - x)[:, None]) & (idx <= (end + x)[:, None])


class SpanLoss(nn.Module):
    """(CE(start) + CE(end)) / 2 over the valid bins (Eq. 2.11)."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, out: NLQOutput, start: Tensor, end: Tensor, video_pad: Tensor) -> Tensor:
        """Logits (B, L) are already masked at padding; labels (B,) are bin indices."""
        return 0.5 * (F.cross_entropy(out.start_logits, start) + F.cross_entropy(out.end_logits, end))


class HighlightLoss(nn.Module):
    """Weighted BCE of the per-bin "inside the answer" logit, GT extended by ``extend`` (Eq. 2.13)."""

    def __init__(self, weight: float = 20.0, extend: float = 0.1, pos_weight: float = 2.0) -> None:
        super().__init__()
        self.weight, self.extend, self.pos_weight = weight, extend, pos_weight

    def forward(self, out: NLQOutput, start: Tensor, end: Tensor, video_pad: Tensor) -> Tensor:
        """Mean over valid bins; positives count ``pos_weight`` times."""
        target = gt_mask(start, end, out.highlight.shape[1], self.extend).float()
        w = (1.0 + (self.pos_weight - 1.0) * target) * (~video_pad).float()
        bce = F.binary_cross_entropy_with_logits(out.highlight, target, reduction="none")
        return (bce * w).sum() / w.sum().clamp(min=1.0)


class SaliencyLoss(nn.Module):
    """Hinge max(0, Δ + S(t_out) − S(t_in)) on sampled inside/outside bins (Eq. 2.14)."""

    def __init__(self, weight: float = 1.0, margin: float = 0.2, num_pairs: int = 2) -> None:
        super().__init__()
        self.weight, self.margin, self.num_pairs = weight, margin, num_pairs

    def forward(self, out: NLQOutput, start: Tensor, end: Tensor, video_pad: Tensor) -> Tensor:
        """Samples ``num_pairs`` inside and outside bins per clip (clips without outside bins are skipped)."""
        inside = gt_mask(start, end, out.saliency.shape[1]) & ~video_pad
        outside = ~inside & ~video_pad
        has_neg = outside.any(dim=1)
        if not has_neg.any():
            return out.saliency.sum() * 0.0
        # random scores pick uniform samples among the allowed bins
        r = torch.rand(out.saliency.shape, device=out.saliency.device)
        pos = r.masked_fill(~inside, -1.0).topk(self.num_pairs, dim=1).indices  # (B, P)
        neg = r.masked_fill(~outside, -1.0).topk(self.num_pairs, dim=1).indices  # (B, P)
        s_in, s_out = out.saliency.gather(1, pos), out.saliency.gather(1, neg)
        valid_pos = inside.gather(1, pos)
        valid_neg = outside.gather(1, neg)
        hinge = (self.margin + s_out - s_in).clamp(min=0.0)  # (B, P)
        keep = (valid_pos & valid_neg & has_neg[:, None]).float()
        return (hinge * keep).sum() / keep.sum().clamp(min=1.0)


class NPMLoss(nn.Module):
    """Weighted BCE of segment scores (Eq. 2.5).

    Args:
        weight: the term's weight.
        pos_weight: weight of positive segments.
        label: ``"overlap"``: a segment is positive when it intersects the answer (the thesis: "Y is 1 if the
            k-th video segment has an intersection with the target moment span"); ``"start_end"``: only the
            segments holding the answer's start or end bin (the author's release), so the middle of a long
            answer is labelled negative and, since features are re-weighted by the score, suppressed.
    """

    def __init__(
        self, weight: float = 1.0, pos_weight: float = 2.0, label: Literal["overlap", "start_end"] = "overlap"
    ) -> None:
        super().__init__()
        self.weight, self.pos_weight, self.label = weight, pos_weight, label

    def forward(self, out: NLQOutput, start: Tensor, end: Tensor, video_pad: Tensor) -> Tensor:
        """Mean over valid segments; ``start``/``end`` (B,) answer bins, segments of ``out.segment_len``."""
        k = out.npm_scores.shape[1]
        seg = torch.arange(k, device=start.device)[None, :]  # (1, K)
        first = (start // out.segment_len)[:, None]  # (B, 1) segment of the start bin
        last = (end // out.segment_len)[:, None]  # (B, 1) segment of the end bin
        target = (seg >= first) & (seg <= last) if self.label == "overlap" else (seg == first) | (seg == last)
        target = target.float()
        w = (1.0 + (self.pos_weight - 1.0) * target) * out.segment_valid.float()
        p = out.npm_scores.clamp(1e-6, 1 - 1e-6)
        bce = -(target * p.log() + (1 - target) * (1 - p).log())
        return (bce * w).sum() / w.sum().clamp(min=1.0)


class ContrastiveLoss(nn.Module):
    """Video frame-level InfoNCE (Eq. 2.7–2.9).

    F(v, T) = mean over valid tokens of cos(v, t) / τ; every GT bin is a positive against all valid bins
    outside the GT; averaged over positives, then over the batch.
    """

    def __init__(self, weight: float = 1.0, temperature: float = 0.07) -> None:
        super().__init__()
        self.weight, self.temperature = weight, temperature

    def forward(
        self, out: NLQOutput, start: Tensor, end: Tensor, video_pad: Tensor, text_pad: Tensor
    ) -> Tensor:
        """Needs the text padding mask to average over valid tokens only."""
        tok = (~text_pad).float()  # (B, Lt)
        sim = torch.einsum("bvc,btc->bvt", out.video_proj, out.text_proj)  # (B, Lv, Lt) cosines
        f = (sim * tok[:, None, :]).sum(-1) / tok.sum(-1, keepdim=True).clamp(min=1.0) / self.temperature
        pos = gt_mask(start, end, f.shape[1]) & ~video_pad  # (B, Lv)
        neg = ~pos & ~video_pad
        neg_lse = torch.logsumexp(f.masked_fill(~neg, -math.inf), dim=1, keepdim=True)  # (B, 1)
        neg_lse = torch.where(neg.any(dim=1, keepdim=True), neg_lse, torch.full_like(neg_lse, -math.inf))
        loss = -(f - torch.logaddexp(f, neg_lse))  # (B, Lv): −log e^{F+} / (e^{F+} + Σ e^{F−})
        per_clip = (loss * pos).sum(1) / pos.sum(1).clamp(min=1)
        return per_clip.mean()


class NLQLoss(nn.Module):
    """All terms with their weights: ``{"loss": weighted total, "span": …, …}`` (terms unweighted)."""

    def __init__(
        self,
        span: float = 1.0,
        highlight: float = 20.0,
        saliency: float = 1.0,
        npm: float = 1.0,
        contrastive: float = 1.0,
        highlight_extend: float = 0.1,
        saliency_margin: float = 0.2,
        temperature: float = 0.07,
        npm_label: Literal["overlap", "start_end"] = "overlap",
    ) -> None:
        super().__init__()
        self.span = SpanLoss(span)
        self.highlight = HighlightLoss(highlight, highlight_extend)
        self.saliency = SaliencyLoss(saliency, saliency_margin)
        self.npm = NPMLoss(npm, label=npm_label)
        self.contrastive = ContrastiveLoss(contrastive, temperature)

    def forward(self, out: NLQOutput, batch: dict) -> dict[str, Tensor]:
        """Compute every term with a non-zero weight on a collated batch (labels ``start``/``end`` >= 0)."""
        start, end, vpad = batch["start"], batch["end"], batch["video_padding_mask"]
        if (start < 0).any():
            raise ValueError(
                "NLQLoss: batch has queries without ground truth (start = -1); train on annotated splits"
            )
        terms: dict[str, Tensor] = {}
        for name in ("span", "highlight", "saliency", "npm"):
            module = getattr(self, name)
            if module.weight:
                terms[name] = module(out, start, end, vpad)
        if self.contrastive.weight:
            terms["contrastive"] = self.contrastive(out, start, end, vpad, batch["text_padding_mask"])
        terms["loss"] = sum(getattr(self, n).weight * v for n, v in terms.items())
        return terms
