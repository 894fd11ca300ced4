"""Depthwise 1-d convolution over (B, L, D) sequences, as the NLQ span encoder's conv blocks use it.

Two paths with the same result:

* fast: the (B, L, D) tensor is read in place as a channels-last (B, D, 1, L) image and convolved with
  ``F.conv2d`` (oneDNN's channels-last depthwise kernel on CPU); the output is channels-last too, so it is
  (B, L, D) again without a copy. No transposes, and on this project's 2-core CPU the convolution itself
  is ~5× faster forward than ``nn.Conv1d`` on the transposed input (benchmarks/ops.py);
* reference: transpose to (B, D, L), ``F.conv1d`` with ``groups=D``, transpose back.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from repsuite.ops.config import use_reference_ops

__all__ = ["depthwise_conv1d", "depthwise_conv1d_reference"]


def _check(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.ndim != 3:
        raise ValueError(f"depthwise_conv1d: `x` must be (B, L, D), got {tuple(x.shape)}")
    dim = x.shape[-1]
    if weight.ndim != 3 or weight.shape[:2] != (dim, 1) or weight.shape[2] % 2 != 1:
        raise ValueError(
            f"depthwise_conv1d: `weight` must be ({dim}, 1, K) with K odd (same padding), "
            f"got {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"depthwise_conv1d: `bias` must be ({dim},), got {tuple(bias.shape)}")


def depthwise_conv1d_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """(B, L, D), (D, 1, K), (D,) -> (B, L, D): ``nn.Conv1d(D, D, K, padding=K // 2, groups=D)`` along L."""
    _check(x, weight, bias)
    h = rearrange(x, "b l d -> b d l")  # (B, D, L) for conv1d
    out = F.conv1d(h, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[-1])
    return rearrange(out, "b d l -> b l d")  # (B, L, D)


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Depthwise 'same' convolution along L of a (B, L, D) sequence; fast path unless the switch is on.

    Args:
        x: (B, L, D).
        weight: (D, 1, K), K odd (an ``nn.Conv1d(D, D, K, groups=D)`` weight).
        bias: optional (D,).

    Returns:
        (B, L, D), equal to :func:`depthwise_conv1d_reference`.
    """
    if use_reference_ops():
        return depthwise_conv1d_reference(x, weight, bias)
    _check(x, weight, bias)
    image = rearrange(x.contiguous(), "b l d -> b d 1 l")  # a view: channels-last (B, D, 1, L)
    kernel = rearrange(weight, "d 1 k -> d 1 1 k")  # (D, 1, 1, K)
    out = F.conv2d(image, kernel, bias, padding=(0, weight.shape[-1] // 2), groups=x.shape[-1])
    return rearrange(out, "b d 1 l -> b l d")  # (B, L, D); a view when the output is channels-last
