"""The thesis's multi-scale cross-modal transformer for Ego4D NLQ (chapter 2, Fig. 2.4), plain PyTorch.

Data flow for a batch of B clips with Lv video bins and Lt text tokens (K is a forward argument; the
LightningModule draws it per training batch and pools over several K at inference)::

    video (B, Lv, Dv) ──proj──▶ V (B, Lv, D) ─┐ split into K segments of l = ceil(Lv / K) bins
    text  (B, Lt[, Dt]) ─enc/proj─▶ T (B, Lt, D)  (K drawn from {2..6} per batch in training)
          per segment: T cross-modal layers, video↔text co-attention (Eq. 2.2–2.3) + FFN
          NPM per segment: attention pooling → Linear → sigmoid (Eq. 2.4), segment features × score
    C (B, Lv, D) ──▶ conditioned span predictor (start/end logits), highlight, saliency, contrastive proj.

``attention="self"`` swaps the co-attention for self-attention over the concatenated [video; text]
sequence (the thesis's "Ours-variant (self-attention)", Moment-DETR style) for the Table 2.1 ablation.
Layer sizes follow the author's release (shared/reference/nlq.md §3.1): hidden 256, 8 heads, FFN 1024,
T = 3, input projections LayerNorm → Dropout → Linear (ReLU) ×2, sine positions restarted per segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from repsuite.ops import Dropout, MultiHeadCrossAttention, depthwise_conv1d

__all__ = ["NLQModel", "NLQModelConfig", "NLQOutput"]


@dataclass
class NLQModelConfig:
    """Sizes and switches of :class:`NLQModel`.

    Args:
        video_dim: width of the video rows (sum of feature sources, +2 with temporal positions).
        text_dim: width of precomputed text token features; 0 means token ids embedded by the model.
        vocab_size: token-id vocabulary (open_clip's BPE) when ``text_dim == 0``.
        hidden: model width D.
        num_heads: attention heads.
        ffn: feed-forward width.
        num_layers: cross-modal layers T.
        dropout: dropout inside the cross-modal layers.
        input_dropout: dropout inside the input projections (0.5 in the release).
        attention: ``"cross"`` (the thesis) or ``"self"`` (the Moment-DETR-style variant).
        text_encoder_layers: transformer layers of the token-id text encoder.
        span_layers: conv blocks of the conditioned span predictor's shared encoder.
        contrast_dim: projection width of the frame-level contrastive loss (64 in the release).
        max_video_len: longest video the span predictor's learned positions cover.
        max_text_len: longest token sequence of the token-id text encoder (open_clip's 77).
        npm_normalize: divide segment scores by the clip's largest score before re-weighting (Eq. 2.6);
            the author's release re-weights with the raw scores (off).
        segment_by: ``"clip"`` splits each clip's own bins into K segments, so a query's answer never
            depends on the other clips of its batch; ``"batch"`` splits the padded batch length, as the
            author's release does (reproduces its numbers; a short clip is then cut differently depending
            on its neighbours and the batch size).
    """

    video_dim: int
    text_dim: int = 0
    vocab_size: int = 49408
    hidden: int = 256
    num_heads: int = 8
    ffn: int = 1024
    num_layers: int = 3
    dropout: float = 0.1
    input_dropout: float = 0.5
    attention: Literal["cross", "self"] = "cross"
    text_encoder_layers: int = 2
    span_layers: int = 4
    contrast_dim: int = 64
    max_video_len: int = 600
    max_text_len: int = 77
    npm_normalize: bool = False
    segment_by: Literal["clip", "batch"] = "clip"


@dataclass
class NLQOutput:
    """Per-bin predictions for one forward pass at one scale K.

    ``start_logits``/``end_logits`` (B, Lv) are masked to −inf at padding; ``highlight`` and ``saliency``
    (B, Lv) are logits; ``npm_scores`` (B, K) are NPM probabilities with ``segment_valid`` (B, K);
    ``segment_len`` (B,) is the bins per segment of each clip (segment j holds bins [j·len, (j+1)·len));
    ``video_proj`` (B, Lv, C) and ``text_proj`` (B, Lt, C) are L2-normalised contrastive embeddings.
    """

    start_logits: Tensor
    end_logits: Tensor
    highlight: Tensor
    saliency: Tensor
    npm_scores: Tensor
    segment_valid: Tensor
    segment_len: Tensor
    video_proj: Tensor
    text_proj: Tensor


def sine_encoding(angle: Tensor, dim: int) -> Tensor:
    """Sine / cosine features of angles (...,) in radians -> (..., dim), DETR's frequencies."""
    freq = 10000 ** (2 * (torch.arange(dim // 2, device=angle.device, dtype=torch.float32)) / dim)
    angles = angle.float()[..., None] / freq  # (..., dim / 2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., dim)


@dataclass
class SegmentLayout:
    """Where each clip's bins sit in its K segments (see :func:`segment_layout`).

    ``gather`` (B, K·S) is the bin of each segment slot, ``slot_pad`` (B, K·S) marks empty slots,
    ``scatter`` (B, Lv) is the slot of each bin, ``length`` (B,) the bins per segment of each clip and
    ``angle`` (B, K·S) the position angle of each slot, restarting per segment (1..len over (0, 2π]).
    """

    gather: Tensor
    slot_pad: Tensor
    scatter: Tensor
    length: Tensor
    angle: Tensor


def segment_layout(video_pad: Tensor, k: int, by: Literal["clip", "batch"]) -> SegmentLayout:
    """Split every clip into ``k`` equal segments of ⌈n / k⌉ bins (fewer segments when n < k).

    ``n`` is the clip's own number of bins (``by="clip"``) or the padded batch length (``by="batch"``, the
    author's release). Vectorised over the batch: segment slots (B, K, S), S = ⌈Lv / k⌉.
    """
    b, lv = video_pad.shape
    dev = video_pad.device
    n = (~video_pad).sum(1) if by == "clip" else torch.full((b,), lv, device=dev)
    n = n.clamp(min=1)
    length = torch.div(n + k - 1, k, rounding_mode="floor")  # (B,) ceil(n / k)
    # slots per segment from the padded length, not the longest clip (the same when the batch is padded to
    # its longest clip, as collate_nlq does): no host sync, so torch.compile keeps one graph; slots past a
    # clip's own segment length are padding either way
    s = max(1, -(-lv // k))
    j = torch.arange(k, device=dev)[None, :, None]  # (1, K, 1)
    i = torch.arange(s, device=dev)[None, None, :]  # (1, 1, S)
    bins = j * length[:, None, None] + i  # (B, K, S)
    empty = (i >= length[:, None, None]) | (bins >= n[:, None, None])
    gather = rearrange(bins.clamp(max=lv - 1), "b k s -> b (k s)")  # (B, K·S)
    slot_pad = rearrange(empty, "b k s -> b (k s)") | video_pad.gather(1, gather)
    t = torch.arange(lv, device=dev)[None, :]  # (1, Lv)
    scatter = (t // length[:, None]) * s + t % length[:, None]  # (B, Lv)
    angle = (i + 1).float() / length[:, None, None] * 2 * math.pi  # (B, 1, S)
    angle = rearrange(angle.expand(b, k, s), "b k s -> b (k s)")
    return SegmentLayout(gather, slot_pad, scatter.clamp(max=k * s - 1), length, angle)


class InputProjection(nn.Module):
    """LayerNorm → Dropout → Linear → ReLU → LayerNorm → Dropout → Linear (author's release)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), Dropout(dropout), nn.Linear(in_dim, out_dim), nn.ReLU(),
            nn.LayerNorm(out_dim), Dropout(dropout), nn.Linear(out_dim, out_dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, in_dim) -> (B, L, out_dim)."""
        return self.net(x)


class FeedForward(nn.Module):
    """Post-norm residual FFN with GELU."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        return self.norm(x + self.drop(self.net(x)))


class AttentionBlock(nn.Module):
    """Post-norm residual attention from ``x`` to ``context`` (self-attention when they are the same)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadCrossAttention(dim, heads, dropout)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, context_padding: Tensor | None) -> Tensor:
        """(B, Lq, D), (B, Lk, D), (B, Lk) bool padding -> (B, Lq, D)."""
        return self.norm(x + self.drop(self.attn(x, context, key_padding_mask=context_padding)))


class CoAttentionLayer(nn.Module):
    """One cross-modal layer: video attends to text and text attends to video, simultaneously, then FFNs.

    The last layer has no text branch (``update_text=False``): only the video stream feeds the heads.
    """

    def __init__(self, cfg: NLQModelConfig, update_text: bool = True) -> None:
        super().__init__()
        self.v2t = AttentionBlock(cfg.hidden, cfg.num_heads, cfg.dropout)
        self.v_ffn = FeedForward(cfg.hidden, cfg.ffn, cfg.dropout)
        self.t2v = AttentionBlock(cfg.hidden, cfg.num_heads, cfg.dropout) if update_text else None
        self.t_ffn = FeedForward(cfg.hidden, cfg.ffn, cfg.dropout) if update_text else None

    def forward(self, v: Tensor, t: Tensor, v_pad: Tensor, t_pad: Tensor) -> tuple[Tensor, Tensor]:
        """(N, Lv, D), (N, Lt, D) with their padding masks -> updated (v, t)."""
        v_new = self.v_ffn(self.v2t(v, t, t_pad))  # language-conditioned video (Eq. 2.2)
        if self.t2v is None:
            return v_new, t
        return v_new, self.t_ffn(self.t2v(t, v, v_pad))  # video-conditioned text (Eq. 2.3)


class SelfAttentionLayer(nn.Module):
    """The variant: self-attention over the concatenated [video; text] sequence, then an FFN."""

    def __init__(self, cfg: NLQModelConfig) -> None:
        super().__init__()
        self.attn = AttentionBlock(cfg.hidden, cfg.num_heads, cfg.dropout)
        self.ffn = FeedForward(cfg.hidden, cfg.ffn, cfg.dropout)

    def forward(self, v: Tensor, t: Tensor, v_pad: Tensor, t_pad: Tensor) -> tuple[Tensor, Tensor]:
        """Same interface as :class:`CoAttentionLayer`."""
        lv = v.shape[1]
        x = torch.cat([v, t], dim=1)  # (N, Lv + Lt, D)
        pad = torch.cat([v_pad, t_pad], dim=1)  # (N, Lv + Lt)
        x = self.ffn(self.attn(x, x, pad))
        return x[:, :lv], x[:, lv:]


class TokenTextEncoder(nn.Module):
    """Trainable text encoder over BPE token ids, for users without CLIP weights.

    Token embedding + learned positions + a small transformer encoder. Padded positions are masked by
    ``pad`` wherever text is read, so no id is reserved for padding: id 0 is a real token of CLIP's BPE
    vocabulary ("!"), and ``padding_idx=0`` would have frozen its embedding at zero.
    """

    def __init__(self, cfg: NLQModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Parameter(torch.zeros(cfg.max_text_len, cfg.hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([AttentionBlock(cfg.hidden, cfg.num_heads, cfg.dropout),
                           FeedForward(cfg.hidden, cfg.ffn, cfg.dropout)])
            for _ in range(cfg.text_encoder_layers)
        )  # fmt: skip

    def forward(self, ids: Tensor, pad: Tensor) -> Tensor:
        """(B, Lt) ids, (B, Lt) padding -> (B, Lt, D)."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for attn, ffn in self.layers:
            x = ffn(attn(x, x, pad))
        return x


class ConvBlock(nn.Module):
    """Pre-norm residual depthwise-separable 1-d convolution (kernel 7), as VSLNet's feature encoder."""

    def __init__(self, dim: int, dropout: float, kernel: int = 7) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.pointwise = nn.Conv1d(dim, dim, 1)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D); padded bins are zeroed before the convolution."""
        h = self.norm(x).masked_fill(pad[..., None], 0.0)
        # the Conv1d parameters (checkpoint layout) applied along L of (B, L, D) without transposes: the
        # depthwise one as a channels-last convolution, the 1 × 1 one as the matmul it is
        h = F.gelu(depthwise_conv1d(h, self.depthwise.weight, self.depthwise.bias))  # (B, L, D)
        h = F.linear(h, self.pointwise.weight[..., 0], self.pointwise.bias)  # (B, L, D)
        return x + self.drop(h)


class SpanEncoder(nn.Module):
    """VSLNet's shared feature encoder: learned positions, conv blocks, one self-attention block."""

    def __init__(self, cfg: NLQModelConfig) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(cfg.max_video_len, cfg.hidden))
        nn.init.normal_(self.pos, std=0.02)
        self.convs = nn.ModuleList(ConvBlock(cfg.hidden, cfg.dropout) for _ in range(cfg.span_layers))
        self.attn = AttentionBlock(cfg.hidden, cfg.num_heads, cfg.dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        if x.shape[1] > self.pos.shape[0]:
            raise ValueError(
                f"SpanEncoder: {x.shape[1]} video bins exceed max_video_len={self.pos.shape[0]}; pool the "
                "clip (Ego4DNLQDataModule(max_video_len=...)) or raise the model's max_video_len"
            )
        x = x + self.pos[: x.shape[1]]
        for conv in self.convs:
            x = conv(x, pad)
        return self.attn(x, x, pad)


class ConditionedSpanPredictor(nn.Module):
    """VSLNet's conditioned span predictor (Eq. 2.10): h_s = Enc(C), h_e = Enc(h_s), logits from [h; C]."""

    def __init__(self, cfg: NLQModelConfig) -> None:
        super().__init__()
        self.encoder = SpanEncoder(cfg)
        self.start_head = nn.Sequential(
            nn.Linear(2 * cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1)
        )
        self.end_head = nn.Sequential(
            nn.Linear(2 * cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1)
        )

    def forward(self, c: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L, D) -> start and end logits (B, L), −inf at padding."""
        h_s = self.encoder(c, pad)
        h_e = self.encoder(h_s, pad)
        start = self.start_head(torch.cat([h_s, c], dim=-1)).squeeze(-1)  # (B, L)
        end = self.end_head(torch.cat([h_e, c], dim=-1)).squeeze(-1)  # (B, L)
        neg = torch.finfo(start.dtype).min
        return start.masked_fill(pad, neg), end.masked_fill(pad, neg)


class NilPredictionModule(nn.Module):
    """Segment confidence (Eq. 2.4): w = softmax(Conv1x1(C_k)), A_k = Σ w·c, S = σ(FFN(A_k))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pool = nn.Linear(dim, 1)  # a 1×1 convolution over the sequence
        self.score = nn.Linear(dim, 1)

    def forward(self, c: Tensor, pad: Tensor) -> Tensor:
        """(N, l, D), (N, l) padding -> (N,) probabilities (0 for all-padding segments)."""
        logits = self.pool(c).squeeze(-1).masked_fill(pad, float("-inf"))  # (N, l)
        empty = pad.all(dim=1)
        w = torch.softmax(logits.masked_fill(empty[:, None], 0.0), dim=1)  # (N, l)
        pooled = torch.einsum("nl,nld->nd", w, c)  # (N, D)
        return torch.sigmoid(self.score(pooled).squeeze(-1)).masked_fill(empty, 0.0)


class NLQModel(nn.Module):
    """Multi-scale cross-modal transformer with NPM and span / highlight / saliency / contrastive heads."""

    def __init__(self, cfg: NLQModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video_proj = InputProjection(cfg.video_dim, cfg.hidden, cfg.input_dropout)
        if cfg.text_dim > 0:
            self.text_proj = InputProjection(cfg.text_dim, cfg.hidden, cfg.input_dropout)
            self.text_encoder = None
        else:
            self.text_proj = None
            self.text_encoder = TokenTextEncoder(cfg)
        if cfg.attention == "cross":  # the last layer feeds only video to the heads: no text branch
            last = cfg.num_layers - 1
            layers = [CoAttentionLayer(cfg, update_text=i < last) for i in range(cfg.num_layers)]
        else:  # text and video share one sequence, so every layer updates both
            layers = [SelfAttentionLayer(cfg) for _ in range(cfg.num_layers)]
        self.layers = nn.ModuleList(layers)
        self.npm = NilPredictionModule(cfg.hidden)
        self.span = ConditionedSpanPredictor(cfg)
        self.highlight = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        self.saliency = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        self.video_contrast = nn.Linear(cfg.hidden, cfg.contrast_dim)
        self.text_contrast = nn.Linear(cfg.hidden, cfg.contrast_dim)

    def encode_text(self, text: Tensor, text_pad: Tensor) -> Tensor:
        """Token ids (B, Lt) or token features (B, Lt, Dt) -> (B, Lt, D)."""
        if self.text_encoder is not None:
            if text.ndim != 2 or text.dtype != torch.long:
                raise ValueError(
                    f"NLQModel: built for token ids (text_dim=0) but got text {tuple(text.shape)} "
                    f"{text.dtype}; set text_dim to the feature width for precomputed text features"
                )
            return self.text_encoder(text, text_pad)
        if text.ndim != 3 or text.shape[-1] != self.cfg.text_dim:
            raise ValueError(
                f"NLQModel: expected text features (B, Lt, {self.cfg.text_dim}), got {tuple(text.shape)}"
            )
        return self.text_proj(text)

    def encode(self, video: Tensor, text: Tensor, text_pad: Tensor) -> tuple[Tensor, Tensor]:
        """The scale-independent part of :meth:`forward`: video (B, Lv, Dv) -> (B, Lv, D), text -> (B, Lt, D).

        Inference at several K computes it once and passes it to each scale's :meth:`forward` (for an hour of
        video the 2,818-d input projection is about a tenth of a scale's work).
        """
        self._check_video(video)
        return self.video_proj(video), self.encode_text(text, text_pad)

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 3 or video.shape[-1] != self.cfg.video_dim:
            raise ValueError(
                f"NLQModel: expected video (B, Lv, {self.cfg.video_dim}), got {tuple(video.shape)}"
            )

    def forward(
        self,
        video: Tensor,
        video_pad: Tensor,
        text: Tensor,
        text_pad: Tensor,
        num_segments: int,
        encoded: tuple[Tensor, Tensor] | None = None,
    ) -> NLQOutput:
        """One pass at scale K = ``num_segments``.

        Args:
            video: (B, Lv, Dv) bins.
            video_pad: (B, Lv) bool, True = padding.
            text: (B, Lt) ids or (B, Lt, Dt) features.
            text_pad: (B, Lt) bool, True = padding.
            num_segments: K, the number of equal segments the video is split into.
            encoded: :meth:`encode`'s output for these inputs, when already computed (another scale).
        """
        self._check_video(video)
        lv = video.shape[1]
        k = max(1, min(num_segments, lv))
        v, t = (
            encoded if encoded is not None else self.encode(video, text, text_pad)
        )  # (B, Lv, D), (B, Lt, D)
        text_embed = t

        # K segments per clip, positions restarting per segment; every segment attends to the query alone
        lay = segment_layout(video_pad, k, self.cfg.segment_by)
        d = v.shape[-1]
        v = v.gather(1, repeat(lay.gather, "b n -> b n d", d=d))  # (B, K·S, D)
        v = v + sine_encoding(lay.angle, d).to(v.dtype)
        v = rearrange(v, "b (k s) d -> (b k) s d", k=k)  # (B·K, S, D)
        v_pad_s = rearrange(lay.slot_pad, "b (k s) -> (b k) s", k=k)  # (B·K, S)
        t_rep = repeat(t, "b lt d -> (b k) lt d", k=k)  # (B·K, Lt, D)
        t_pad_rep = repeat(text_pad, "b lt -> (b k) lt", k=k)  # (B·K, Lt)
        for layer in self.layers:
            v, t_rep = layer(v, t_rep, v_pad_s, t_pad_rep)
        v = v.masked_fill(v_pad_s[..., None], 0.0)

        npm = self.npm(v, v_pad_s)  # (B·K,)
        weight = npm
        if self.cfg.npm_normalize:  # Eq. 2.6: S̄_k = S_k / max(S)
            per_clip = rearrange(npm, "(b k) -> b k", k=k)
            weight = rearrange(per_clip / per_clip.amax(dim=1, keepdim=True).clamp(min=1e-6), "b k -> (b k)")
        c = rearrange(v * weight[:, None, None], "(b k) s d -> b (k s) d", k=k)  # (B, K·S, D)
        c = c.gather(1, repeat(lay.scatter, "b l -> b l d", d=d))  # (B, Lv, D): back to bin order
        c = c.masked_fill(video_pad[..., None], 0.0)
        start, end = self.span(c, video_pad)
        return NLQOutput(
            start_logits=start,
            end_logits=end,
            highlight=self.highlight(c).squeeze(-1),  # (B, Lv)
            saliency=self.saliency(c).squeeze(-1),  # (B, Lv)
            npm_scores=rearrange(npm, "(b k) -> b k", k=k),
            segment_valid=~rearrange(v_pad_s.all(dim=1), "(b k) -> b k", k=k),
            segment_len=lay.length,
            video_proj=F.normalize(self.video_contrast(c), dim=-1),  # (B, Lv, C)
            text_proj=F.normalize(self.text_contrast(text_embed), dim=-1),  # (B, Lt, C)
        )
