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
from repsuite.ops.drop import dropout

__all__ = [
    "MultiHeadCrossAttention",
    "auto_query_chunk_size",
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
        # scores anyway and draws its mask with bernoulli_ (most of the NLQ span encoder's time at 600 bins):
        # the same maths here with repsuite.ops.dropout's cheaper mask.
        return _explicit(q, k, v, attn_mask, dropout_p, dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


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
