"""Train-time augmentations of thesis §2.4.5, as composable transforms on a clip's feature rows.

Each transform takes ``(rows (n, D), gt_start_row, gt_end_row, dataset)`` with the GT in fractional row
units (seconds × 1.875) and returns the same triple. They run before pooling, only on training samples.

* :class:`SlidingWindow` (SW): keep a random contiguous window of ``r·n`` rows, r ~ U[r_s, r_e] (thesis
  [0.4, 0.8]), that contains the whole GT; if the GT is longer, the window grows to a random size that
  fits it (as the author's release does).
* :class:`VideoSplicing` (VS): with probability p (thesis 0.5), cut another random training clip at a
  random row in [1, len − 2] and insert the current clip there; the GT moves with it.
* :class:`Compose`: SW then VS is the thesis's best setting ("SW and VS", Table 2.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Compose", "SlidingWindow", "VideoSplicing"]


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, ()))


class SlidingWindow:
    """Random window of a fraction of the clip that always contains the GT window.

    Args:
        ratio: (r_s, r_e), the range of the kept fraction.
    """

    def __init__(self, ratio: Sequence[float] = (0.4, 0.8)) -> None:
        lo, hi = float(ratio[0]), float(ratio[1])
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"SlidingWindow: ratio must satisfy 0 < r_s <= r_e <= 1, got {tuple(ratio)}")
        self.ratio = (lo, hi)

    def __call__(
        self, rows: Tensor, start: float, end: float, dataset: Any = None
    ) -> tuple[Tensor, float, float]:
        """Transform (rows, GT start row, GT end row); ``dataset`` supplies donor clips where needed."""
        n = rows.shape[0]
        first, last = max(0, math.floor(start)), min(n, max(math.ceil(end), math.floor(start) + 1))  # GT rows
        gt_len = last - first
        size = max(1, int(_uniform(*self.ratio) * n))
        if size < gt_len:  # the GT must fit: grow to a random size between its length and the clip
            size = _randint(gt_len, n)
        offset = _randint(max(0, last - size), min(first, n - size))
        return rows[offset : offset + size], start - offset, end - offset

    def __repr__(self) -> str:
        """Show the settings."""
        return f"SlidingWindow(ratio={self.ratio})"


class VideoSplicing:
    """Insert the clip into another random training clip with probability ``p``.

    The other clip comes from ``dataset.random_clip_rows()`` (the training dataset provides it).
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"VideoSplicing: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(
        self, rows: Tensor, start: float, end: float, dataset: Any = None
    ) -> tuple[Tensor, float, float]:
        """Transform (rows, GT start row, GT end row); ``dataset`` supplies donor clips where needed."""
        if self.p == 0.0 or float(torch.rand(())) >= self.p:
            return rows, start, end
        other = dataset.random_clip_rows()
        if other.shape[0] < 3:
            return rows, start, end
        cut = _randint(1, other.shape[0] - 2)
        spliced = torch.cat([other[:cut], rows, other[cut:]], dim=0)  # (n_other + n, D)
        return spliced, start + cut, end + cut

    def __repr__(self) -> str:
        """Show the settings."""
        return f"VideoSplicing(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, rows: Tensor, start: float, end: float, dataset: Any = None
    ) -> tuple[Tensor, float, float]:
        """Transform (rows, GT start row, GT end row); ``dataset`` supplies donor clips where needed."""
        for t in self.transforms:
            rows, start, end = t(rows, start, end, dataset)
        return rows, start, end

    def __repr__(self) -> str:
        """Show the settings."""
        return f"Compose({self.transforms})"
