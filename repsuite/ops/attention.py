"""Multi-head attention for video↔text co-attention (thesis §2.4.2, Eq. 2.2–2.3).

Two paths with the same semantics:

* fast: :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels where
  the backend has them, so the (Lq, Lk) score matrix is never stored for backward);
* reference: the textbook ``softmax(Q Kᵀ / √d) V`` with the scores materialised.

Both treat ``key_padding_mask`` like :class:`torch.nn.MultiheadAttention`: ``True`` marks a padded key,
which gets zero weight. A batch row whose keys are *all* padded yields zeros (never NaN), forward and
backward. Long query sequences (an hour of video is ~6,750 feature rows; 100,000 is supported) are cut
into query chunks so the per-call score buffer stays under a fixed budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from repsuite.ops.config import use_reference_ops
from repsuite.ops.drop import keep_mask, quantised_drop_probability

__all__ = [
    "MultiHeadCrossAttention",
    "auto_query_chunk_size",
    "dropout_attention",
    "multi_head_attention",
    "multi_head_attention_reference",
]

# Score-matrix budget per query chunk. The reference path always materialises the (B, H, chunk, Lk)
# scores, so its budget is small: a 100,000-row video against 32 text tokens still runs in one or two
# chunks while a 100,000 × 100,000 self-attention is cut into small pieces. The fast path's kernels
# (flash / memory-efficient) keep no score matrix at all; its larger budget only bounds what SDPA's math
# fallback would materialise, without splitting normal inputs into many small kernel launches.
SCORE_BUDGET_BYTES = 64 * 2**20
FAST_SCORE_BUDGET_BYTES = 2**30


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, dropout_p: float) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"multi_head_attention: `{name}` must be a Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"multi_head_attention: `{name}` must have shape (B, H, L, Dh), got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"multi_head_attention: `{name}` must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"multi_head_attention: `q`, `k`, `v` must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            "multi_head_attention: `q`, `k`, `v` must agree on (B, H), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"multi_head_attention: `q` and `k` must share Dh, got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(
            f"multi_head_attention: `k` and `v` must share Lk, got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, Tensor) else type(key_padding_mask)
            raise ValueError(
                f"multi_head_attention: `key_padding_mask` must be a bool Tensor (True = padding), got {got}"
            )
        expected = (k.shape[0], k.shape[2])
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"multi_head_attention: `key_padding_mask` must have shape (B, Lk) = {expected}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"multi_head_attention: `dropout_p` must be in [0, 1), got {dropout_p}")


def auto_query_chunk_size(
    batch: int, heads: int, len_k: int, itemsize: int = 4, *, fast: bool = False
) -> int:
    """Largest query chunk whose (B, H, chunk, Lk) score buffer fits the path's budget.

    The budget is :data:`FAST_SCORE_BUDGET_BYTES` for the fast path and :data:`SCORE_BUDGET_BYTES` for the
    reference path.
    """
    budget = FAST_SCORE_BUDGET_BYTES if fast else SCORE_BUDGET_BYTES
    per_query = max(1, batch * heads * max(len_k, 1) * itemsize)
    return max(1, budget // per_query)


def _valid_and_keep(key_padding_mask: Tensor | None, q: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Turn a padding mask into an SDPA mask plus a per-row keep factor.

    Rows whose keys are all padded are allowed to attend everywhere (so softmax stays finite) and their
    output is multiplied by zero afterwards; this avoids a host sync and keeps gradients NaN-free.
    """
    if key_padding_mask is None:
        return None, None
    valid = ~key_padding_mask  # (B, Lk)
    empty = ~valid.any(dim=-1)  # (B,)
    valid = valid | empty[:, None]
    attn_mask = rearrange(valid, "b k -> b 1 1 k")  # broadcast over heads and queries
    keep = rearrange((~empty).to(q.dtype), "b -> b 1 1 1")
    return attn_mask, keep


def _fast(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    if dropout_p > 0.0 and q.device.type == "cpu":
        # SDPA's CPU kernels take no dropout, so it falls back to its math path, which materialises the
        # scores for the whole batch and draws its mask with bernoulli_ (most of the NLQ span encoder's time
        # at 600 bins): a blocked kernel with repsuite.ops.dropout's cheaper mask instead. torch.compile runs
        # it as an opaque eager call (tracing its block loop would unroll it into a huge graph)
        return _dropout_attention_eager(q, k, v, attn_mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


# Score bytes per block of the blocked dropout attention: a block's scores, weights and mask stay in the
# CPU's cache through the softmax → dropout → matmul chain instead of streaming (B, H, Lq, Lk) tensors
# through memory once per operation (at 600 × 600 × 8 heads × batch 32 that is 370 MB per pass).
BLOCK_SCORE_BYTES = 3 * 2**20


def _blocks(n: int, len_q: int, len_k: int) -> list[tuple[slice, slice]]:
    """(rows of the flattened B·H axis, query range) blocks of about :data:`BLOCK_SCORE_BYTES` scores."""
    per_query = 4 * max(len_k, 1)
    q_block = max(1, min(len_q, BLOCK_SCORE_BYTES // per_query))
    rows = max(1, BLOCK_SCORE_BYTES // (per_query * q_block)) if q_block == len_q else 1
    return [
        (slice(i, min(n, i + rows)), slice(j, min(len_q, j + q_block)))
        for i in range(0, n, rows)
        for j in range(0, len_q, q_block)
    ]


class _DropoutAttention(torch.autograd.Function):
    """softmax(Q Kᵀ / √d + bias) ∘ M / (1 − p) · V, computed block by block.

    Saves only Q, K, V, the bool dropout mask M and the output; backward recomputes each block's weights
    (as flash attention does) and uses rowsum(dO ∘ O) for the softmax gradient, so no (Lq, Lk) float
    tensor outlives its block. Inputs are (N, L, d) with N = B · H; ``bias`` is (N, 1, Lk) or None.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float, keep: Tensor | None):
        scale = 1.0 / math.sqrt(q.shape[-1])
        with torch.autocast(q.device.type, enabled=False):  # inputs share a dtype already (bf16 or not)
            out, keep, drop = _DropoutAttention._forward(q, k, v, bias, p, keep, scale)
        ctx.save_for_backward(q, k, v, bias, keep, out)
        ctx.scale, ctx.keep_scale = scale, 1.0 / (1.0 - drop)
        return out

    @staticmethod
    def _forward(
        q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float, keep: Tensor | None, scale: float
    ) -> tuple[Tensor, Tensor, float]:
        n, len_q, _ = q.shape
        len_k = k.shape[1]
        drop = quantised_drop_probability(p)
        out = q.new_empty(n, len_q, v.shape[-1])  # (N, Lq, Dv)
        draw = keep is None
        if draw:
            keep = torch.empty(n, len_q, len_k, dtype=torch.bool, device=q.device)
        for rows, qs in _blocks(n, len_q, len_k):
            weights = _block_weights(q[rows, qs], k[rows], None if bias is None else bias[rows], scale)
            if draw:
                keep[rows, qs] = keep_mask(weights, drop)
            weights.mul_(keep[rows, qs])
            torch.bmm(weights.to(v.dtype), v[rows], out=out[rows, qs])
        return out.mul_(1.0 / (1.0 - drop)), keep, drop

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, bias, keep, out = ctx.saved_tensors
        scale, keep_scale = ctx.scale, ctx.keep_scale
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        # rowsum(dP ∘ P) of the softmax gradient equals rowsum(dO ∘ O): no pass over the weights for it
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax-gradient precision (fp32 for half types)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # (N, Lq, 1)
        for rows, qs in _blocks(q.shape[0], q.shape[1], k.shape[1]):
            weights = _block_weights(q[rows, qs], k[rows], None if bias is None else bias[rows], scale)
            mask, g = keep[rows, qs], grad_out[rows, qs]
            dropped = (weights * mask).to(v.dtype)  # (n, lq, Lk): the weights that reached V
            dv[rows].baddbmm_(dropped.transpose(1, 2), g, alpha=keep_scale)
            grad_w = torch.bmm(g, v[rows].transpose(1, 2)).to(acc)  # (n, lq, Lk)
            grad_s = grad_w.mul_(mask).mul_(keep_scale).sub_(delta[rows, qs]).mul_(weights).to(q.dtype)
            torch.bmm(grad_s, k[rows], out=dq[rows, qs]).mul_(scale)
            dk[rows].baddbmm_(grad_s.transpose(1, 2), q[rows, qs], alpha=scale)
        return dq, dk, dv, None, None, None


def _block_weights(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """(n, lq, d), (n, Lk, d), (n, 1, Lk) additive mask -> float32 (or wider) softmax weights (n, lq, Lk)."""
    if bias is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    else:
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
    return scores.softmax(dim=-1, dtype=torch.promote_types(q.dtype, torch.float32))


@torch.compiler.disable
def _dropout_attention_eager(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, p: float) -> Tensor:
    return dropout_attention(q, k, v, attn_mask, p)


def dropout_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float, keep: Tensor | None = None
) -> Tensor:
    """Attention with dropout on the weights, blocked (the CPU fast path when ``dropout_p > 0``).

    Args:
        q: queries (B, H, Lq, Dh).
        k: keys (B, H, Lk, Dh).
        v: values (B, H, Lk, Dv).
        attn_mask: bool, broadcastable to (B, H, Lq, Lk), ``True`` where a key may be attended (as SDPA).
        dropout_p: drop probability, applied as :func:`repsuite.ops.dropout` does (quantised to 2⁻¹⁶).
        keep: optional bool (B, H, Lq, Lk) dropout mask to use instead of drawing one (tests).

    Returns:
        (B, H, Lq, Dv), the same maths as the explicit path with that mask.
    """
    b, h, len_q, _ = q.shape
    len_k = k.shape[2]
    flat = [rearrange(t, "b h l d -> (b h) l d").contiguous() for t in (q, k, v)]  # (B·H, L, d)
    bias = None
    if attn_mask is not None:  # additive (B·H, 1, Lk): fused into the score matmul by baddbmm
        if attn_mask.shape[-2] != 1:
            raise ValueError("dropout_attention: `attn_mask` must be a key mask broadcast over queries")
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
            ~attn_mask, -math.inf
        )
        bias = rearrange(bias.expand(b, h, 1, len_k), "b h 1 k -> (b h) 1 k").contiguous()
    if keep is not None:
        keep = rearrange(keep.expand(b, h, len_q, len_k), "b h q k -> (b h) q k").contiguous()
    out = _DropoutAttention.apply(*flat, bias, dropout_p, keep)  # (B·H, Lq, Dv)
    return rearrange(out, "(b h) l d -> b h l d", b=b)


def _reference(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    return _explicit(q, k, v, attn_mask, dropout_p, F.dropout)


def _explicit(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float, drop: Callable[..., Tensor]
) -> Tensor:
    """softmax(Q Kᵀ / √d) V with the scores materialised; ``drop(weights, p)`` applies the dropout."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 softmax for half types
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k).to(softmax_dtype) * scale  # (B, H, Lq, Lk)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        weights = drop(weights, dropout_p)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v)  # (B, H, Lq, Dv)


def _attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    dropout_p: float,
    query_chunk_size: int | None,
    reference: bool,
) -> Tensor:
    _check_inputs(q, k, v, key_padding_mask, dropout_p)
    batch, heads, len_q, _ = q.shape
    len_k = k.shape[2]
    if len_k == 0 or len_q == 0:
        return q.new_zeros(batch, heads, len_q, v.shape[-1])
    attn_mask, keep = _valid_and_keep(key_padding_mask, q)
    kernel = _reference if reference else _fast
    if query_chunk_size is None:
        query_chunk_size = auto_query_chunk_size(batch, heads, len_k, 4, fast=not reference)
    if query_chunk_size < 1:
        raise ValueError(f"multi_head_attention: `query_chunk_size` must be >= 1, got {query_chunk_size}")
    if len_q <= query_chunk_size:
        out = kernel(q, k, v, attn_mask, dropout_p)
    else:
        out = torch.cat(
            [kernel(qc, k, v, attn_mask, dropout_p) for qc in q.split(query_chunk_size, dim=2)], dim=2
        )  # (B, H, Lq, Dv)
    if keep is not None:
        out = out * keep
    return out


def multi_head_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    query_chunk_size: int | None = None,
) -> Tensor:
    """Scaled dot-product attention over heads, fast path unless the reference switch is on.

    Args:
        q: queries (B, H, Lq, Dh).
        k: keys (B, H, Lk, Dh).
        v: values (B, H, Lk, Dv).
        key_padding_mask: optional bool (B, Lk); ``True`` marks padding (zero attention weight).
        dropout_p: dropout on the attention weights; pass 0.0 at evaluation time.
        query_chunk_size: queries per kernel call; ``None`` picks the largest chunk whose
            (B, H, chunk, Lk) score buffer fits the path's budget (:func:`auto_query_chunk_size`).

    Returns:
        (B, H, Lq, Dv). Rows of a batch element whose keys are all padded are zeros.
    """
    return _attention(q, k, v, key_padding_mask, dropout_p, query_chunk_size, use_reference_ops())


def multi_head_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    query_chunk_size: int | None = None,
) -> Tensor:
    """:func:`multi_head_attention` forced onto the explicit softmax(QKᵀ/√d)V path."""
    return _attention(q, k, v, key_padding_mask, dropout_p, query_chunk_size, True)


class MultiHeadCrossAttention(nn.Module):
    """Queries from one sequence attend to another (video→text or text→video), with projections.

    With ``context = x`` it is ordinary self-attention, which is how the thesis's "self-attention
    variant" (Moment-DETR style, concatenated video+text) is built.

    Args:
        dim: model width D of the queries and of the output.
        num_heads: attention heads; must divide ``dim``.
        dropout: dropout on attention weights during training.
        context_dim: width of the context sequence (defaults to ``dim``).
        bias: whether the projections have biases.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MultiHeadCrossAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.context_dim = context_dim or dim
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(self.context_dim, dim, bias=bias)
        self.v_proj = nn.Linear(self.context_dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, context: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend from ``x`` (B, Lq, D) to ``context`` (B, Lk, Dc); returns (B, Lq, D).

        ``key_padding_mask`` is bool (B, Lk) with ``True`` at padded context positions.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MultiHeadCrossAttention: `x` must be (B, Lq, {self.dim}), got {tuple(x.shape)}"
            )
        if context.ndim != 3 or context.shape[-1] != self.context_dim or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"MultiHeadCrossAttention: `context` must be ({x.shape[0]}, Lk, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        h = self.num_heads
        q = rearrange(self.q_proj(x), "b l (h d) -> b h l d", h=h)  # (B, H, Lq, Dh)
        k = rearrange(self.k_proj(context), "b l (h d) -> b h l d", h=h)  # (B, H, Lk, Dh)
        v = rearrange(self.v_proj(context), "b l (h d) -> b h l d", h=h)  # (B, H, Lk, Dh)
        out = multi_head_attention(
            q, k, v, key_padding_mask=key_padding_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))  # (B, Lq, D)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in ``print(module)``."""
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"context_dim={self.context_dim}"
        )
