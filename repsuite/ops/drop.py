"""Dropout whose random mask is cheap on CPU.

``F.dropout`` on CPU draws one Bernoulli sample per element (``bernoulli_``, ~7 ns each on this project's
2-core machine) and then multiplies by a float mask. In the NLQ training step at the thesis's shapes that
was 39% of the step (4.9 s of 12.6 s): the input projections drop 50% of 2,818-d features and the span
encoder drops attention weights of 600 × 600 maps. The fast path draws 64 random bits per four elements
(one ``randint`` over the whole int64 range, viewed as four int16 values), keeps an element when its 16 bits
clear a threshold, and applies the mask with one ``where`` and an in-place scale; backward reuses the bool
mask. The drop probability is ``p`` rounded to a multiple of 2⁻¹⁶ (0.1 → 0.100006) and the kept values
are scaled by the exact 1 / (1 − p') of that rounded probability, so the output's expectation is the
input. The random stream differs from ``F.dropout``'s (same seed, other masks); the distribution does not.

Off CPU, and under :func:`repsuite.ops.reference_ops`, :func:`dropout` is ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsuite.ops.config import use_reference_ops

__all__ = ["Dropout", "dropout", "dropout_reference", "keep_mask", "quantised_drop_probability"]

_LEVELS = 1 << 16  # int16 values per random draw


def quantised_drop_probability(p: float) -> float:
    """The drop probability the fast path applies for ``p``: ``round(p · 2¹⁶) / 2¹⁶``."""
    return round(p * _LEVELS) / _LEVELS


def _check(x: Tensor, p: float) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"dropout: `x` must be a floating-point Tensor, got {got}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: `p` must be in [0, 1], got {p}")


def dropout_reference(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """``F.dropout``: zero each element with probability ``p``, scale the rest by 1 / (1 − p)."""
    _check(x, p)
    return F.dropout(x, p, training)


def keep_mask(x: Tensor, q: float) -> Tensor:
    """(x.shape) bool, each element True with probability 1 − q (q: :func:`quantised_drop_probability`)."""
    n = x.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    bits = bits.view(torch.int16)[:n].view(x.shape)  # uniform over [-2^15, 2^15)
    return bits >= -(2**15) + int(q * _LEVELS)  # q · 2^16 is an integer already


class _MaskedScale(torch.autograd.Function):
    """where(keep, x, 0) · scale, with the bool mask the only thing saved for backward."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Dropout (any shape): zero elements with probability ≈ ``p``, scale the rest to keep the expectation.

    The CPU fast path quantises ``p`` to a multiple of 2⁻¹⁶ (:func:`quantised_drop_probability`); elsewhere,
    or with the reference switch on, this is ``F.dropout``.
    """
    _check(x, p)
    if not training or p == 0.0:
        return x
    if use_reference_ops() or x.device.type != "cpu" or p == 1.0 or x.numel() == 0:
        return F.dropout(x, p, training)
    q = quantised_drop_probability(p)
    if q == 0.0:  # p below 2^-17: nothing would be dropped
        return x
    if q == 1.0:
        return F.dropout(x, 1.0, training)
    return _MaskedScale.apply(x, keep_mask(x, q), 1.0 / (1.0 - q))


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout` (same arguments, no state: checkpoints are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> the same shape."""
        if self.inplace:  # the fast path makes a new tensor; keep the in-place contract of nn.Dropout
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
