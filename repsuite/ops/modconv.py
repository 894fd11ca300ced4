"""StyleGAN2 modulated convolution and fused leaky ReLU, without custom CUDA ops.

``modulated_conv2d`` computes, per sample b (Karras et al. 2020; thesis Eq. 3.5–3.6)::

    w'_b[o, i, y, x] = w[o, i, y, x] · s_b[i]
    w''_b[o, ...]    = w'_b[o, ...] / sqrt(Σ_{i,y,x} w'_b[o, i, y, x]² + eps)      (if demodulate)
    out_b            = conv2d(resample(x_b), w''_b)

Resampling follows the "clean" StyleGAN2 used by GFPGAN (``gfpgan/archs/stylegan2_clean_arch.py``):
``up=2`` is bilinear 2× interpolation (``align_corners=False``) before the convolution, ``down=2`` is
bilinear 0.5× interpolation before it.

Two exact fast formulations; ``formulation="auto"`` picks the cheaper one for the shape:

* ``"grouped"``: build the B modulated weights and run one grouped convolution (``groups=B``);
* ``"scaled"``: scale the input channels by ``s``, run one shared convolution over the batch, and scale
  the output channels by the demodulation factor ``rsqrt((s²) @ Σ_{y,x} w² + eps)``. Same result
  because convolution is linear in the input channels.

The reference path loops over samples and convolves each with its own explicit weight.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from repsuite.ops.config import use_reference_ops

__all__ = [
    "choose_formulation",
    "fused_leaky_relu",
    "fused_leaky_relu_reference",
    "modulated_conv2d",
    "modulated_conv2d_reference",
    "modulated_weight",
]

Formulation = Literal["auto", "grouped", "scaled"]


def _autocast_inputs(x: Tensor, weight: Tensor, style: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Under autocast, run in the autocast dtype like ``F.conv2d`` does.

    Inside a layer the parameters (weight) stay float32 while activations and the style affine's output
    come out of autocast in bf16/fp16; the op then casts all three, as a plain convolution would.
    """
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return x.to(dtype), weight.to(dtype), style.to(dtype)
    return x, weight, style


def _check_modconv(
    x: Tensor, weight: Tensor, style: Tensor, up: int, down: int, padding: int | None, eps: float
) -> int:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"modulated_conv2d: `x` must be a float tensor (B, C_in, H, W), got {got}")
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"modulated_conv2d: `weight` must be (C_out, C_in, k, k), got {got}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"modulated_conv2d: `weight` has C_in={weight.shape[1]} but `x` has C_in={x.shape[1]} "
            f"(weight {tuple(weight.shape)}, x {tuple(x.shape)})"
        )
    if weight.shape[2] != weight.shape[3]:
        raise ValueError(f"modulated_conv2d: `weight` kernel must be square, got {tuple(weight.shape)}")
    if not isinstance(style, Tensor) or style.ndim != 2 or tuple(style.shape) != (x.shape[0], x.shape[1]):
        got = tuple(style.shape) if isinstance(style, Tensor) else type(style).__name__
        raise ValueError(
            f"modulated_conv2d: `style` must be (B, C_in) = {(x.shape[0], x.shape[1])}, got {got}"
        )
    if not (x.dtype == weight.dtype == style.dtype):
        raise ValueError(
            "modulated_conv2d: `x`, `weight`, `style` must share a dtype, got "
            f"{x.dtype}, {weight.dtype}, {style.dtype}"
        )
    if up not in (1, 2) or down not in (1, 2) or (up == 2 and down == 2):
        raise ValueError(
            f"modulated_conv2d: `up`/`down` must be 1 or 2 and not both 2, got up={up}, down={down}"
        )
    if padding is not None and padding < 0:
        raise ValueError(f"modulated_conv2d: `padding` must be >= 0, got {padding}")
    if eps <= 0:
        raise ValueError(f"modulated_conv2d: `eps` must be > 0, got {eps}")
    return weight.shape[-1] // 2 if padding is None else padding


def _resample(x: Tensor, up: int, down: int) -> Tensor:
    if up == 2:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    if down == 2:
        return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    return x


def choose_formulation(
    x_shape: tuple[int, ...], weight_shape: tuple[int, ...], up: int = 1, down: int = 1
) -> str:
    """Pick ``"grouped"`` or ``"scaled"`` for a shape by comparing the extra memory traffic.

    "scaled" makes two more passes over activations (B·C_in·H·W in, B·C_out·H'·W' out, forward and
    backward), "grouped" materialises B modulated weights (B·C_out·C_in·k²) and runs a grouped
    convolution, which backends execute somewhat less efficiently than one dense convolution. Measured by
    ``benchmarks/ops.py`` (2-core CPU, B=4, 3×3): "scaled" wins at 512 ch / 32 px (weights dominate) and
    for the 2× upsampling conv there, "grouped" wins at 256 ch / 128 px and 64 ch / 512 px (activations
    dominate); the factor 4 below separates those cases.
    """
    b, c_in, h, w = x_shape
    c_out, _, k, _ = weight_shape
    h_out, w_out = (h * up // down, w * up // down)
    activation_work = b * (c_in * h * w + c_out * h_out * w_out)
    weight_work = b * c_out * c_in * k * k
    return "grouped" if 4 * weight_work < activation_work else "scaled"


def _demod_factor(weight: Tensor, style: Tensor, eps: float) -> Tensor:
    """rsqrt(Σ_{i,y,x} (w[o,i,y,x] s_b[i])² + eps) as (B, C_out), at least fp32 for stability."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w_sq = weight.to(dtype).pow(2).sum(dim=(2, 3))  # (C_out, C_in)
    return torch.rsqrt(style.to(dtype).pow(2) @ w_sq.t() + eps)  # (B, C_out)


def _modconv_scaled(
    x: Tensor, weight: Tensor, style: Tensor, demodulate: bool, eps: float, up: int, down: int, padding: int
) -> Tensor:
    s = rearrange(style, "b c -> b c 1 1")
    # Scale where the tensor is smaller: before a 2x upsample, after a 2x downsample (both linear).
    x = _resample(x * s, up, 1) if up == 2 else _resample(x, 1, down) * s
    out = F.conv2d(x, weight, padding=padding)  # (B, C_out, H', W')
    if demodulate:
        out = out * rearrange(_demod_factor(weight, style, eps).to(out.dtype), "b o -> b o 1 1")
    return out


def modulated_weight(weight: Tensor, style: Tensor, *, demodulate: bool = True, eps: float = 1e-8) -> Tensor:
    """The per-sample kernels of a modulated convolution, (B, C_out, C_in, k, k).

    ``weight`` (C_out, C_in, k, k), ``style`` (B, C_in), as for :func:`modulated_conv2d`.

    ``F.conv2d(x_b, modulated_weight(weight, style)[b])`` is ``modulated_conv2d(x, weight, style)[b]``; a
    style that stays fixed (one source identity) can be folded into a plain convolution this way.
    """
    w = weight[None] * rearrange(style, "b i -> b 1 i 1 1")  # (B, C_out, C_in, k, k)
    if demodulate:
        w = w * rearrange(_demod_factor(weight, style, eps).to(w.dtype), "b o -> b o 1 1 1")
    return w


def _modconv_grouped(
    x: Tensor, weight: Tensor, style: Tensor, demodulate: bool, eps: float, up: int, down: int, padding: int
) -> Tensor:
    b = x.shape[0]
    c_out = weight.shape[0]
    w = modulated_weight(weight, style, demodulate=demodulate, eps=eps)  # (B, C_out, C_in, k, k)
    x = _resample(x, up, down)
    x = rearrange(x, "b c h w -> 1 (b c) h w")  # (1, B*C_in, H, W)
    out = F.conv2d(x, rearrange(w, "b o i kh kw -> (b o) i kh kw"), padding=padding, groups=b)
    return rearrange(out, "1 (b o) h w -> b o h w", b=b, o=c_out)  # (B, C_out, H', W')


def modulated_conv2d_reference(
    x: Tensor,
    weight: Tensor,
    style: Tensor,
    *,
    demodulate: bool = True,
    eps: float = 1e-8,
    up: int = 1,
    down: int = 1,
    padding: int | None = None,
) -> Tensor:
    """Per-sample loop with explicitly modulated weights: the definition the fast paths must match."""
    if isinstance(x, Tensor) and isinstance(weight, Tensor) and isinstance(style, Tensor):
        x, weight, style = _autocast_inputs(x, weight, style)
    pad = _check_modconv(x, weight, style, up, down, padding, eps)
    outs = []
    for b in range(x.shape[0]):
        w = weight * style[b][None, :, None, None]  # (C_out, C_in, k, k)
        if demodulate:
            w = w * torch.rsqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + eps)
        outs.append(F.conv2d(_resample(x[b : b + 1], up, down), w, padding=pad))
    return torch.cat(outs, dim=0)  # (B, C_out, H', W')


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    style: Tensor,
    *,
    demodulate: bool = True,
    eps: float = 1e-8,
    up: int = 1,
    down: int = 1,
    padding: int | None = None,
    formulation: Formulation = "auto",
) -> Tensor:
    """StyleGAN2 modulated convolution with per-sample styles.

    Args:
        x: input (B, C_in, H, W).
        weight: shared kernel (C_out, C_in, k, k), already carrying any equalised-lr scale.
        style: per-sample channel scales (B, C_in) (the output of the layer's style affine).
        demodulate: normalise each output channel's modulated weights to unit L2 norm.
        eps: added under the square root of the demodulation.
        up: 2 for a bilinear 2× upsample before the convolution (clean StyleGAN2).
        down: 2 for a bilinear 0.5× downsample before the convolution.
        padding: convolution padding; defaults to k // 2 ("same").
        formulation: ``"auto"`` (cheapest for the shape), ``"grouped"`` or ``"scaled"``; ignored when the
            reference switch is on.

    Returns:
        (B, C_out, H·up/down, W·up/down) for "same" padding; under autocast the op runs in the autocast
        dtype (x, weight and style are cast), like a plain convolution.
    """
    if isinstance(x, Tensor) and isinstance(weight, Tensor) and isinstance(style, Tensor):
        x, weight, style = _autocast_inputs(x, weight, style)
    if use_reference_ops():
        return modulated_conv2d_reference(
            x, weight, style, demodulate=demodulate, eps=eps, up=up, down=down, padding=padding
        )
    pad = _check_modconv(x, weight, style, up, down, padding, eps)
    if formulation == "auto":
        formulation = choose_formulation(tuple(x.shape), tuple(weight.shape), up, down)  # type: ignore[assignment]
    if formulation == "scaled":
        return _modconv_scaled(x, weight, style, demodulate, eps, up, down, pad)
    if formulation == "grouped":
        return _modconv_grouped(x, weight, style, demodulate, eps, up, down, pad)
    raise ValueError(
        f"modulated_conv2d: `formulation` must be 'auto', 'grouped' or 'scaled', got {formulation!r}"
    )


# --------------------------------------------------------------------------------------------------
# fused leaky ReLU: leaky_relu(x + bias, slope) * scale, as StyleGAN2's FusedLeakyReLU.


def _check_flrelu(x: Tensor, bias: Tensor | None, negative_slope: float) -> None:
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"fused_leaky_relu: `x` must be a float tensor (B, C, ...), got {got}")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.ndim != 1 or bias.shape[0] != x.shape[1]:
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(
                f"fused_leaky_relu: `bias` must be (C,) = ({x.shape[1]},), got {got} for x {tuple(x.shape)}"
            )
    if negative_slope < 0:
        raise ValueError(f"fused_leaky_relu: `negative_slope` must be >= 0, got {negative_slope}")


def _bias_view(bias: Tensor, x: Tensor) -> Tensor:
    return bias.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)  # (1, C, 1, ...)


class _FusedLeakyReLU(torch.autograd.Function):
    """Saves only a bool mask (1 byte/element) instead of the pre-activation, like the CUDA op.

    The backward is written with differentiable ops, so double backward (R1 penalty) works.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, negative_slope: float, scale: float) -> Tensor:  # type: ignore[override]
        pre = x + _bias_view(bias, x) if bias is not None else x.clone()
        positive = pre > 0
        out = F.leaky_relu_(pre, negative_slope).mul_(scale)
        ctx.save_for_backward(positive)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.negative_slope = negative_slope
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor | None, None, None]:  # type: ignore[override]
        (positive,) = ctx.saved_tensors
        slope = torch.where(positive, ctx.scale, ctx.scale * ctx.negative_slope).to(grad_out.dtype)
        grad_x = grad_out * slope
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            dims = [0, *range(2, grad_x.ndim)]
            grad_bias = grad_x.sum(dim=dims).to(ctx.bias_dtype)
        return grad_x, grad_bias, None, None


def fused_leaky_relu_reference(
    x: Tensor, bias: Tensor | None = None, negative_slope: float = 0.2, scale: float = math.sqrt(2.0)
) -> Tensor:
    """Plain composition ``leaky_relu(x + bias, negative_slope) * scale``."""
    _check_flrelu(x, bias, negative_slope)
    if bias is not None:
        x = x + _bias_view(bias, x)
    return F.leaky_relu(x, negative_slope) * scale


def fused_leaky_relu(
    x: Tensor, bias: Tensor | None = None, negative_slope: float = 0.2, scale: float = math.sqrt(2.0)
) -> Tensor:
    """``leaky_relu(x + bias, negative_slope) * scale`` with bias (C,) broadcast over dim 1 of (B, C, ...).

    The fast path is one autograd node that keeps a bool mask for backward (a quarter of the memory of
    the saved pre-activation in fp32) and supports double backward.
    """
    if use_reference_ops():
        return fused_leaky_relu_reference(x, bias, negative_slope, scale)
    _check_flrelu(x, bias, negative_slope)
    return _FusedLeakyReLU.apply(x, bias, negative_slope, scale)
