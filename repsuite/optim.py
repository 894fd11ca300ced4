"""Optimizer construction shared by every LightningModule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["adam_kwargs"]

#: Devices with PyTorch's single-kernel ("fused") Adam / AdamW.
_FUSED_DEVICES = ("cpu", "cuda")


def adam_kwargs(params: Iterable[nn.Parameter | dict[str, Any]]) -> dict[str, Any]:
    """``{"fused": True}`` when every parameter can take the fused Adam / AdamW kernel, else ``{}``.

    On CPU PyTorch otherwise runs Adam as a Python loop over the parameters: for the face generator's
    ~200 tensors that was 13.7 ms per step against 3.1 ms fused (same update rule; floating-point sums
    differ in the last bits). Lightning builds the optimizers after moving the module to its device, so
    the device seen here is the training one.
    """
    tensors = []
    for p in params:
        tensors.extend(p["params"] if isinstance(p, dict) else [p])
    ok = tensors and all(
        t.device.type in _FUSED_DEVICES
        and t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        for t in tensors
    )
    return {"fused": True} if ok else {}
