"""From start/end logits to ranked windows in seconds, with scores (thesis Eq. 2.12, §2.5).

* :func:`joint_topk`: P(s)·P(e) over valid bins with s ≤ e (optionally e − s < ``max_span``), the k best
  cells of the upper triangle — the official VSLNet decoder when ``max_span`` is None.
* :func:`merge_candidates`: pool ranked lists (several scales K, or several models for an ensemble), by
  score, keeping the best k; optional exact de-duplication and temporal NMS (off by default, as the
  author's release, where the same span can fill several slots).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["joint_topk", "joint_topk_dense", "merge_candidates", "ranked_windows", "temporal_nms"]


def _probabilities(start_logits: Tensor, end_logits: Tensor, video_pad: Tensor) -> tuple[Tensor, Tensor]:
    neg = torch.finfo(torch.float32).min
    p_s = torch.softmax(start_logits.float().masked_fill(video_pad, neg), dim=-1)  # (B, L)
    p_e = torch.softmax(end_logits.float().masked_fill(video_pad, neg), dim=-1)  # (B, L)
    return p_s, p_e


def joint_topk_dense(
    start_logits: Tensor, end_logits: Tensor, video_pad: Tensor, k: int = 5, max_span: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`joint_topk` through the whole (B, L, L) start × end matrix (the reference path)."""
    p_s, p_e = _probabilities(start_logits, end_logits, video_pad)
    joint = p_s[:, :, None] * p_e[:, None, :]  # (B, L, L): [b, s, e]
    length = joint.shape[-1]
    allowed = torch.ones(length, length, dtype=torch.bool, device=joint.device).triu()
    if max_span is not None:
        allowed &= ~torch.ones_like(allowed).triu(diagonal=max_span)
    valid = ~video_pad
    allowed = allowed[None] & valid[:, :, None] & valid[:, None, :]  # (B, L, L)
    joint = joint.masked_fill(~allowed, -1.0)
    k = min(k, length * length)
    scores, flat = joint.flatten(1).topk(k, dim=-1)  # (B, k)
    return flat // length, flat % length, scores


def _best_end(p_e: Tensor, valid: Tensor, max_span: int | None) -> Tensor:
    """(B, L): for each start s, the largest end probability over the ends it may pair with."""
    b = p_e.masked_fill(~valid, -1.0)
    if max_span is None:
        return b.flip(-1).cummax(-1).values.flip(-1)  # max over e ≥ s
    padded = torch.nn.functional.pad(b, (0, max_span - 1), value=-1.0)  # (B, L + span − 1)
    return torch.nn.functional.max_pool1d(padded[:, None], max_span, stride=1)[:, 0]  # max over [s, s + span)


def joint_topk(
    start_logits: Tensor,
    end_logits: Tensor,
    video_pad: Tensor,
    k: int = 5,
    max_span: int | None = None,
    rows_per_chunk: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k (start, end) bin pairs by joint probability, without the L × L matrix.

    Each start's best pair is P(s)·max P(e) over its allowed ends; the k-th largest of these row bests is a
    lower bound on the k-th best pair, so only starts whose row best reaches it can hold a top-k pair. Those
    rows are scored in chunks of ``rows_per_chunk`` against every end: memory is linear in L, and for an
    hour of unpooled video (6,750 bins) a handful of rows are scored instead of 6,750². The result equals
    :func:`joint_topk_dense` (tested), the official VSLNet decoder when ``max_span`` is None.

    Args:
        start_logits: (B, L).
        end_logits: (B, L).
        video_pad: (B, L) bool, True = padding (never chosen).
        k: windows per query.
        max_span: optional cap on end − start + 1, in bins.
        rows_per_chunk: starts scored at once (memory: rows_per_chunk × L per query).

    Returns:
        starts (B, k), ends (B, k) long, scores (B, k) joint probabilities; slots beyond a clip's valid
        (start, end) cells have score −1.
    """
    p_s, p_e = _probabilities(start_logits, end_logits, video_pad)
    batch, length = p_s.shape
    k = min(k, length * length)
    valid = ~video_pad
    row_best = torch.where(valid, p_s, -1.0) * _best_end(p_e, valid, max_span).clamp(min=0)  # (B, L)
    row_best = row_best.masked_fill(~valid, -1.0)
    bound = row_best.topk(min(k, length), dim=-1).values[:, -1:]  # (B, 1) ≤ the k-th best pair
    candidate = (row_best >= bound) & valid  # (B, L)
    ends = torch.arange(length, device=p_s.device)
    out_s = torch.zeros(batch, k, dtype=torch.long, device=p_s.device)
    out_e = torch.zeros_like(out_s)
    out_p = torch.full((batch, k), -1.0, device=p_s.device)
    for b in range(batch):
        best_p = p_s.new_full((0,), 0.0)
        best_s = best_e = out_s.new_zeros(0)
        rows = candidate[b].nonzero()[:, 0]  # ascending starts
        for first in range(0, rows.numel(), rows_per_chunk):
            r = rows[first : first + rows_per_chunk]  # (C,)
            vals = p_s[b, r, None] * p_e[b, None, :]  # (C, L)
            allowed = (ends[None] >= r[:, None]) & valid[b, None, :]
            if max_span is not None:
                allowed &= ends[None] < r[:, None] + max_span
            vals = vals.masked_fill(~allowed, -1.0)
            top, flat = vals.flatten().topk(min(k, vals.numel()))
            # running top-k: earlier (smaller-start) candidates first, as the dense row-major order
            best_p = torch.cat([best_p, top])
            best_s = torch.cat([best_s, r[flat // length]])
            best_e = torch.cat([best_e, flat % length])
            order = _rank(best_p, best_s * length + best_e)[:k]
            best_p, best_s, best_e = best_p[order], best_s[order], best_e[order]
        keep = best_p >= 0
        n = int(keep.sum())
        out_p[b, :n], out_s[b, :n], out_e[b, :n] = best_p[keep], best_s[keep], best_e[keep]
    return out_s, out_e, out_p


def _rank(scores: Tensor, flat_index: Tensor) -> Tensor:
    """Order by descending score, ties by ascending flat (start, end) index."""
    by_index = flat_index.argsort(stable=True)
    return by_index[scores[by_index].argsort(descending=True, stable=True)]


def temporal_nms(windows: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Keep mask (N,) for windows (N, 2) sorted by descending score, suppressing IoU > threshold."""
    keep = torch.ones(windows.shape[0], dtype=torch.bool, device=windows.device)
    for i in range(windows.shape[0]):
        if not keep[i]:
            continue
        inter = torch.minimum(windows[i, 1], windows[i + 1 :, 1]) - torch.maximum(
            windows[i, 0], windows[i + 1 :, 0]
        )
        union = torch.maximum(windows[i, 1], windows[i + 1 :, 1]) - torch.minimum(
            windows[i, 0], windows[i + 1 :, 0]
        )
        iou = inter.clamp(min=0) / union.clamp(min=1e-9)
        keep[i + 1 :] &= iou <= iou_threshold
    return keep


def merge_candidates(
    windows: Tensor, scores: Tensor, k: int = 5, deduplicate: bool = False, nms_iou: float | None = None
) -> tuple[Tensor, Tensor]:
    """Pool candidate windows per query and keep the best ``k`` by score.

    Args:
        windows: (B, M, 2) candidates (seconds or bins) from several scales or models.
        scores: (B, M); candidates with score < 0 are absent.
        k: windows to keep.
        deduplicate: keep only the best-scored copy of identical windows.
        nms_iou: optional temporal NMS threshold.

    Returns:
        windows (B, k, 2) and scores (B, k), best first; missing slots have score −1 and repeat the best
        window.
    """
    order = scores.argsort(dim=1, descending=True)
    windows = windows.gather(1, order[..., None].expand_as(windows))
    scores = scores.gather(1, order)
    out_w = windows.new_zeros(windows.shape[0], k, 2)
    out_s = scores.new_full((scores.shape[0], k), -1.0)
    for b in range(windows.shape[0]):
        keep = scores[b] >= 0
        if deduplicate:
            seen: set[tuple[float, float]] = set()
            for i in range(windows.shape[1]):
                key = (float(windows[b, i, 0]), float(windows[b, i, 1]))
                if keep[i] and key in seen:
                    keep[i] = False
                seen.add(key)
        w, s = windows[b][keep], scores[b][keep]
        if nms_iou is not None and w.shape[0]:
            m = temporal_nms(w, s, nms_iou)
            w, s = w[m], s[m]
        n = min(k, w.shape[0])
        out_w[b, :n], out_s[b, :n] = w[:n], s[:n]
        if 0 < n < k:
            out_w[b, n:] = w[0]
    return out_w, out_s


def ranked_windows(windows: list[list[float]], scores: list[float]) -> tuple[list[list[float]], list[float]]:
    """One query's windows and scores as submitted: absent slots (score < 0) dropped, at least one kept.

    A clip too short to fill every slot keeps only its real windows; a query with none keeps the first
    slot at score 0, so every query has an answer.
    """
    keep = [i for i, v in enumerate(scores) if v >= 0] or [0]
    return [windows[i] for i in keep], [max(scores[i], 0.0) for i in keep]
