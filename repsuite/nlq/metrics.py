"""``NLQRecall``: the official Ego4D NLQ scores as a DDP-safe torchmetrics metric.

Same arithmetic as :func:`repsuite.nlq.evaluation.evaluate_nlq` (and the challenge server): IoU of windows
in seconds, hit iff any of the first K windows in ranked order has IoU > t, recall averaged over scored
entries, mIoU of the first window. IoUs are computed in float64 so threshold decisions match the Python
evaluator bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NLQRecall", "window_iou"]


def window_iou(windows: Tensor, gt: Tensor) -> Tensor:
    """Official temporal IoU of ranked windows (B, K, 2) against one GT window each (B, 2) -> (B, K).

    0/0 (a point prediction on a point GT) gives NaN, as numpy does in the official script.
    """
    w = windows.to(torch.float64)
    g = gt.to(torch.float64)[:, None, :]  # (B, 1, 2)
    inter = (torch.minimum(w[..., 1], g[..., 1]) - torch.maximum(w[..., 0], g[..., 0])).clamp(min=0.0)
    union = (torch.maximum(w[..., 1], g[..., 1]) - torch.minimum(w[..., 0], g[..., 0])).clamp(min=0.0)
    return inter / union  # (B, K)


class NLQRecall(Metric):
    """R@K at IoU > t and mIoU over decoded windows, synchronised across processes.

    Args:
        thresholds: IoU thresholds t.
        top_k: K values; windows past ``max(top_k)`` are ignored.
        deduplicate: score each ``query_id`` once (its first occurrence). Use it in validation loops, where a
            DistributedSampler repeats samples to even out shards; the official scorer counts duplicates.
        strict: like ``deduplicate``, and queries never seen count as misses with IoU 0; needs
            ``num_queries``.
        num_queries: total number of ground-truth queries (strict mode's denominator).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        thresholds: Sequence[float] = (0.3, 0.5),
        top_k: Sequence[int] = (1, 5),
        deduplicate: bool = False,
        strict: bool = False,
        num_queries: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if strict and num_queries is None:
            raise ValueError("NLQRecall(strict=True) needs `num_queries`, the number of ground-truth queries")
        if not thresholds or not top_k or min(top_k) < 1:
            raise ValueError(
                f"NLQRecall: need thresholds and K >= 1, got thresholds={thresholds}, top_k={top_k}"
            )
        self.thresholds = tuple(float(t) for t in thresholds)
        self.top_k = tuple(int(k) for k in top_k)
        self.deduplicate = deduplicate or strict
        self.strict = strict
        self.num_queries = num_queries
        self.add_state("ious", default=[], dist_reduce_fx="cat")
        self.add_state("query_ids", default=[], dist_reduce_fx="cat")

    def update(
        self, windows: Tensor, gt: Tensor, query_ids: Tensor | None = None, num_windows: Tensor | None = None
    ) -> None:
        """Add a batch.

        Args:
            windows: ranked windows in seconds (B, K, 2), best first.
            gt: ground-truth windows in seconds (B, 2).
            query_ids: integer id of each query (B,), needed for ``deduplicate``/``strict``.
            num_windows: how many of the K windows are real (B,); the rest are padding. Each entry needs >= 1.
        """
        if windows.ndim != 3 or windows.shape[-1] != 2:
            raise ValueError(f"NLQRecall.update: `windows` must be (B, K, 2), got {tuple(windows.shape)}")
        if gt.shape != (windows.shape[0], 2):
            raise ValueError(f"NLQRecall.update: `gt` must be ({windows.shape[0]}, 2), got {tuple(gt.shape)}")
        if self.deduplicate and query_ids is None:
            raise ValueError("NLQRecall.update: `query_ids` is required with deduplicate/strict")
        kmax = max(self.top_k)
        iou = window_iou(windows[:, :kmax], gt)  # (B, K')
        if num_windows is not None:
            if (num_windows < 1).any():
                raise ValueError(
                    "NLQRecall.update: every entry needs at least one window (`num_windows` >= 1)"
                )
            absent = torch.arange(iou.shape[1], device=iou.device)[None, :] >= num_windows[:, None]
            iou = iou.masked_fill(absent, float("-inf"))  # -inf > t is never true
        if iou.shape[1] < kmax:  # fewer windows than the largest K: pad as absent
            iou = torch.cat([iou, iou.new_full((iou.shape[0], kmax - iou.shape[1]), float("-inf"))], dim=1)
        self.ious.append(iou)
        ids = query_ids if query_ids is not None else torch.full((iou.shape[0],), -1, device=iou.device)
        self.query_ids.append(ids.to(torch.long))

    def _gathered(self) -> tuple[Tensor, Tensor]:
        ious = self.ious if isinstance(self.ious, Tensor) else torch.cat(self.ious) if self.ious else None
        ids = (
            self.query_ids
            if isinstance(self.query_ids, Tensor)
            else torch.cat(self.query_ids)
            if self.query_ids
            else None
        )
        if ious is None:
            kmax = max(self.top_k)
            return torch.empty(0, kmax, dtype=torch.float64, device=self.device), torch.empty(
                0, dtype=torch.long
            )
        return ious, ids

    def compute(self) -> dict[str, Tensor]:
        """``R@{K}_IoU{t}``, ``mIoU`` and (with K=1) ``mean_R@1`` as fractions, plus counts."""
        ious, ids = self._gathered()
        num_duplicates = 0
        if ids.numel() and (ids >= 0).all():
            unique, first = _first_occurrence(ids)
            num_duplicates = int(ids.numel() - unique.numel())
            if self.deduplicate:
                ious = ious[first]
                ids = unique
        if num_duplicates and not self.deduplicate:
            warnings.warn(
                f"NLQRecall: {num_duplicates} duplicate query ids counted twice (official behaviour)",
                stacklevel=2,
            )
        hits = {
            (t, k): (ious[:, :k] > t).any(dim=1).to(torch.float64)
            for t in self.thresholds
            for k in self.top_k
        }
        first_iou = ious[:, 0]
        missing = 0
        if self.strict:
            missing = int(self.num_queries - ids.numel())
            if missing < 0:
                raise ValueError(
                    f"NLQRecall: {ids.numel()} distinct queries scored but num_queries={self.num_queries}"
                )
            pad = first_iou.new_zeros(missing)
            hits = {key: torch.cat([h, pad]) for key, h in hits.items()}
            first_iou = torch.cat([first_iou, pad])
        out = {f"R@{k}_IoU{t:g}": hits[(t, k)].mean() for k in self.top_k for t in self.thresholds}
        out["mIoU"] = first_iou.mean()
        if 1 in self.top_k:
            out["mean_R@1"] = torch.stack([hits[(t, 1)].mean() for t in self.thresholds]).mean()
        out["evaluated"] = torch.tensor(float(ious.shape[0]))
        out["missing"] = torch.tensor(float(missing))
        out["duplicates"] = torch.tensor(float(num_duplicates))
        return out


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Unique ids in first-seen order and the index of each one's first occurrence."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    order = torch.argsort(first)
    return unique[order], first[order]
