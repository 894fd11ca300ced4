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

__all__ = ["joint_topk", "merge_candidates", "ranked_windows", "temporal_nms"]


def joint_topk(
    start_logits: Tensor, end_logits: Tensor, video_pad: Tensor, k: int = 5, max_span: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k (start, end) bin pairs by joint probability.

    Args:
        start_logits: (B, L).
        end_logits: (B, L).
        video_pad: (B, L) bool, True = padding (never chosen).
        k: windows per query (fewer when a clip has fewer valid cells).
        max_span: optional cap on end − start + 1, in bins.

    Returns:
        starts (B, k), ends (B, k) long, scores (B, k) joint probabilities (−1 where no cell exists).
    """
    neg = torch.finfo(torch.float32).min
    p_s = torch.softmax(start_logits.float().masked_fill(video_pad, neg), dim=-1)  # (B, L)
    p_e = torch.softmax(end_logits.float().masked_fill(video_pad, neg), dim=-1)  # (B, L)
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
