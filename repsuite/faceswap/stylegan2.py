"""The "clean" StyleGAN2 generator (the thesis's generative prior) and StyleGAN2 discriminator, plain PyTorch.

Module trees produce GFPGAN's / BasicSR's state-dict key names (shared/reference/faceswap.md §1), so the
public ``StyleGAN2_512_Cmul1_FFHQ_B12G4_scratch_800k.pth`` (``params_ema``) and GFPGAN's discriminator
checkpoints load with ``strict=True``. Modulated convolutions run on :func:`repsuite.ops.modulated_conv2d`.

Generator data flow for an ``out_size`` = 2^L image (``num_latent`` = 2L − 2 W+ rows)::

    z (B, 512) ─ style_mlp (norm, 8 × Linear+LeakyReLU) ─▶ w (B, 512), repeated to W+ (B, num_latent, 512)
    constant_input (B, C4, 4, 4) ─ style_conv1 ← w[0] ─ to_rgb1 ← w[1] ─▶ rgb 4×4
    per level 8 … 2^L: style_convs[2k] (bilinear ×2) ← w[i], style_convs[2k+1] ← w[i+1], to_rgbs[k] ← w[i+2]
                       (rgb skip bilinearly upsampled and added), i += 2
    (optional, for the face swapper) after the first conv of each level, CS-SFT with (α, β) of that level.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsuite.ops import fused_leaky_relu, modulated_conv2d

__all__ = [
    "StyleGAN2Config",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "apply_cs_sft",
    "stylegan2_channels",
]


def stylegan2_channels(channel_multiplier: float = 2, narrow: float = 1.0) -> dict[int, int]:
    """Channels per resolution (4 … 1024) of StyleGAN2 as GFPGAN builds it."""
    cm = channel_multiplier
    base = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * cm,
        128: 128 * cm,
        256: 64 * cm,
        512: 32 * cm,
        1024: 16 * cm,
    }
    return {r: int(c * narrow) for r, c in base.items()}


@dataclass
class StyleGAN2Config:
    """Sizes of the generator (and of the matching discriminator).

    Args:
        out_size: image size, a power of two in 16…1024.
        num_style_feat: width of z and w (512).
        num_mlp: Linear layers of the mapping network (8).
        channel_multiplier: widens the 64 px and finer levels (1 for the FFHQ-512 prior, 2 in GFPGAN).
        narrow: scales every level's channels (1.0).
    """

    out_size: int = 512
    num_style_feat: int = 512
    num_mlp: int = 8
    channel_multiplier: float = 2
    narrow: float = 1.0

    def __post_init__(self) -> None:
        if self.out_size not in (16, 32, 64, 128, 256, 512, 1024):
            raise ValueError(f"StyleGAN2 out_size must be a power of two in 16..1024, got {self.out_size}")

    @property
    def log_size(self) -> int:
        """log2 of the image size."""
        return int(math.log2(self.out_size))

    @property
    def num_layers(self) -> int:
        """Style convolutions, i.e. noise inputs: 2·(log2 size − 2) + 1."""
        return (self.log_size - 2) * 2 + 1

    @property
    def num_latent(self) -> int:
        """W+ rows: 2·log2 size − 2."""
        return self.log_size * 2 - 2


class NormStyleCode(nn.Module):
    """Pixel-norm of z: x · rsqrt(mean(x²) + 1e-8) (parameter-free index 0 of ``style_mlp``)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) -> (B, D)."""
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """Clean StyleGAN2 modulated convolution: weight (1, C_out, C_in, k, k) stored pre-scaled, style affine.

    ``sample_mode`` ``"upsample"``/``"downsample"`` resamples the input bilinearly by 2 before the conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: str | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.demodulate, self.sample_mode, self.eps = demodulate, sample_mode, eps
        self.modulation = nn.Linear(num_style_feat, in_channels)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.ones_(self.modulation.bias)  # styles start at 1: the layer starts as a plain conv
        w = torch.randn(1, out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(
            in_channels * kernel_size**2
        )
        self.weight = nn.Parameter(w)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """Input x (B, C_in, H, W), style (B, num_style_feat) -> (B, C_out, H', W')."""
        up = 2 if self.sample_mode == "upsample" else 1
        down = 2 if self.sample_mode == "downsample" else 1
        s = self.modulation(style)  # (B, C_in)
        return modulated_conv2d(
            x, self.weight[0], s, demodulate=self.demodulate, eps=self.eps, up=up, down=down
        )


class StyleConv(nn.Module):
    """Modulated conv ×√2, per-pixel noise × learned strength, bias, LeakyReLU 0.2 (GFPGAN clean)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_style_feat: int, sample_mode: str | None = None
    ):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, num_style_feat, True, sample_mode)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        """Input x (B, C_in, H, W) -> (B, C_out, H', W'); ``noise`` (B or 1, 1, H', W'), fresh when None."""
        out = self.modulated_conv(x, style) * math.sqrt(2.0)
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        out = out + self.weight * noise
        return fused_leaky_relu(out, self.bias.view(-1), 0.2, 1.0)


class ToRGB(nn.Module):
    """1×1 modulated conv to RGB without demodulation, plus bias and the (upsampled) previous RGB."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        """Features (B, C, H, W) -> rgb (B, 3, H, W)."""
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """The learned 4×4 input."""

    def __init__(self, num_channel: int, size: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> Tensor:
        """-> (batch, C, 4, 4)."""
        return self.weight.expand(batch, -1, -1, -1)


def apply_cs_sft(feat: Tensor, scale: Tensor, shift: Tensor, half: bool = True) -> Tensor:
    """Channel-split SFT (thesis Eq. 3.7–3.8): the first half passes, the second becomes α⊙F + β.

    ``scale``/``shift`` have the channels they modulate: C/2 with ``half``, C without.
    """
    if not half:
        return feat * scale + shift
    keep, mod = torch.split(feat, feat.shape[1] // 2, dim=1)  # (B, C/2, H, W) each
    return torch.cat([keep, mod * scale + shift], dim=1)


class StyleGAN2Generator(nn.Module):
    """GFPGAN's clean StyleGAN2 generator (``StyleGAN2GeneratorClean`` key layout)."""

    def __init__(self, cfg: StyleGAN2Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or StyleGAN2Config()
        ch = stylegan2_channels(cfg.channel_multiplier, cfg.narrow)
        self.channels = ch
        d = cfg.num_style_feat
        layers: list[nn.Module] = [NormStyleCode()]
        for _ in range(cfg.num_mlp):
            linear = nn.Linear(d, d)
            nn.init.kaiming_normal_(linear.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LeakyReLU(0.2, inplace=True)]
        self.style_mlp = nn.Sequential(*layers)
        self.constant_input = ConstantInput(ch[4], 4)
        self.style_conv1 = StyleConv(ch[4], ch[4], d)
        self.to_rgb1 = ToRGB(ch[4], d, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(cfg.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, res, res))
        in_ch = ch[4]
        for level in range(3, cfg.log_size + 1):
            out_ch = ch[2**level]
            self.style_convs.append(StyleConv(in_ch, out_ch, d, sample_mode="upsample"))
            self.style_convs.append(StyleConv(out_ch, out_ch, d))
            self.to_rgbs.append(ToRGB(out_ch, d, upsample=True))
            in_ch = out_ch

    @property
    def num_latent(self) -> int:
        """W+ rows the synthesis network takes."""
        return self.cfg.num_latent

    def mean_latent(self, num: int = 4096) -> Tensor:
        """Average w of ``num`` random z (1, 512): the usual truncation centre."""
        z = torch.randn(num, self.cfg.num_style_feat, device=self.constant_input.weight.device)
        return self.style_mlp(z).mean(0, keepdim=True)

    def stored_noise(self) -> list[Tensor]:
        """The fixed noise buffers, one per style conv (``randomize_noise=False``)."""
        return [getattr(self.noises, f"noise{i}") for i in range(self.cfg.num_layers)]

    def latents(
        self,
        styles: Tensor | Sequence[Tensor],
        input_is_latent: bool = False,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        inject_index: int | None = None,
    ) -> Tensor:
        """W+ codes (B, num_latent, 512) from z or w codes, with truncation and two-code style mixing."""
        styles = [styles] if isinstance(styles, Tensor) else list(styles)
        if not styles or len(styles) > 2:
            raise ValueError(f"StyleGAN2Generator: give one style code or two (mixing), got {len(styles)}")
        if not input_is_latent:
            styles = [self.style_mlp(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError(
                    "StyleGAN2Generator: truncation < 1 needs truncation_latent (e.g. mean_latent())"
                )
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        n = self.num_latent
        if len(styles) == 1:
            s = styles[0]
            return s if s.ndim == 3 else s.unsqueeze(1).expand(-1, n, -1)  # (B, n, D)
        k = random.randint(1, n - 1) if inject_index is None else inject_index
        a = styles[0].unsqueeze(1).expand(-1, k, -1)  # (B, k, D)
        b = styles[1].unsqueeze(1).expand(-1, n - k, -1)  # (B, n - k, D)
        return torch.cat([a, b], dim=1)  # (B, n, D)

    def synthesis(
        self,
        latent: Tensor,
        noise: Sequence[Tensor | None] | None = None,
        conditions: Sequence[Tensor] | None = None,
        sft_half: bool = True,
    ) -> Tensor:
        """Image (B, 3, S, S) from W+ codes (B, num_latent, 512).

        Args:
            latent: W+ codes.
            noise: one tensor (or None = fresh) per style conv.
            conditions: optional CS-SFT inputs ``[α_8, β_8, α_16, β_16, ...]`` applied after the first conv of
                each level from 8 px up (fewer entries modulate only the coarser levels).
            sft_half: channel-split SFT (half the channels pass through) as in the thesis and GFPGAN.
        """
        if latent.ndim != 3 or latent.shape[1] != self.num_latent:
            raise ValueError(
                f"StyleGAN2Generator: latent must be (B, {self.num_latent}, {self.cfg.num_style_feat}), "
                f"got {tuple(latent.shape)}"
            )
        noise = list(noise) if noise is not None else [None] * self.cfg.num_layers
        out = self.constant_input(latent.shape[0])
        out = self.style_conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for level, (conv1, conv2, to_rgb) in enumerate(
            zip(self.style_convs[::2], self.style_convs[1::2], self.to_rgbs, strict=True)
        ):
            out = conv1(out, latent[:, i], noise=noise[i])
            if conditions is not None and 2 * level + 1 < len(conditions):
                out = apply_cs_sft(out, conditions[2 * level], conditions[2 * level + 1], sft_half)
            out = conv2(out, latent[:, i + 1], noise=noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip

    def forward(
        self,
        styles: Tensor | Sequence[Tensor],
        input_is_latent: bool = False,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = True,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        inject_index: int | None = None,
        return_latents: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """GFPGAN's calling convention: (image (B, 3, S, S) in about [-1, 1], W+ latents or None).

        Args:
            styles: z (B, 512), a W+ tensor (B, num_latent, 512) with ``input_is_latent``, or two codes for
                style mixing at ``inject_index`` (random when None).
            input_is_latent: the codes are already w (skip the mapping network).
            noise: explicit noise per style conv; otherwise see ``randomize_noise``.
            randomize_noise: fresh noise (True) or the stored noise buffers (False).
            truncation: ψ; w ← w̄ + ψ (w − w̄) when ψ < 1.
            truncation_latent: w̄ (e.g. :meth:`mean_latent`).
            inject_index: first W+ row of the second code when mixing (random when None).
            return_latents: also return the W+ codes used.
        """
        latent = self.latents(styles, input_is_latent, truncation, truncation_latent, inject_index)
        if noise is None and not randomize_noise:
            noise = self.stored_noise()
        image = self.synthesis(latent, noise)
        return image, (latent if return_latents else None)


# ------------------------------------------------------------------------------------------ discriminator
_BLUR_1D = (1.0, 3.0, 3.0, 1.0)


class Blur(nn.Module):
    """[1, 3, 3, 1]² low-pass filter with the padding of BasicSR's ``UpFirDnSmooth`` (down by 2 next)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        k = torch.tensor(_BLUR_1D)
        k2 = k[:, None] * k[None, :]
        self.register_buffer("kernel", (k2 / k2.sum())[None, None], persistent=False)  # (1, 1, 4, 4)
        pad = (4 - 2) + (kernel_size - 1)
        self.pad = ((pad + 1) // 2, pad // 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H + pad − 3, W + pad − 3), depthwise."""
        c = x.shape[1]
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 4, 4), groups=c)


class EqualConv2d(nn.Module):
    """Conv with the equalised-learning-rate scale 1/√(C_in·k²) applied at run time (BasicSR layout)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.scale, self.stride, self.padding = 1 / math.sqrt(in_ch * k * k), stride, padding
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    """Linear with the equalised-learning-rate scale and an optional fused LeakyReLU (BasicSR layout)."""

    def __init__(self, in_dim: int, out_dim: int, activate: bool = False) -> None:
        super().__init__()
        self.scale, self.activate = 1 / math.sqrt(in_dim), activate
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, in) -> (B, out)."""
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias)
        return F.linear(x, self.weight * self.scale, self.bias)


class FusedLeakyReLU(nn.Module):
    """Bias + LeakyReLU(0.2) × √2, with the bias as its own parameter (key ``<n>.bias``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, ...) -> same shape."""
        return fused_leaky_relu(x, self.bias)


class ScaledLeakyReLU(nn.Module):
    """LeakyReLU(0.2) × √2 without bias."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, ...) -> same shape."""
        return fused_leaky_relu(x, None)


class ConvLayer(nn.Sequential):
    """[Blur] → EqualConv2d (stride 2 when downsampling) → [FusedLeakyReLU | ScaledLeakyReLU]."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        k: int,
        downsample: bool = False,
        bias: bool = True,
        activate: bool = True,
    ):
        layers: list[nn.Module] = []
        if downsample:
            layers.append(Blur(k))
        stride, padding = (2, 0) if downsample else (1, k // 2)
        layers.append(EqualConv2d(in_ch, out_ch, k, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch) if bias else ScaledLeakyReLU())
        super().__init__(*layers)


class DiscriminatorBlock(nn.Module):
    """Residual down block: conv3×3, conv3×3 ↓2, 1×1 ↓2 skip, summed and divided by √2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/2, W/2)."""
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2 discriminator with BasicSR's key layout (GFPGAN's global D).

    ``forward(x, return_features=True)`` also returns the output of every ``conv_body`` stage and of
    ``final_conv``, for the weak feature-matching loss (thesis Eq. 3.11).
    """

    def __init__(self, cfg: StyleGAN2Config | None = None, stddev_group: int = 4) -> None:
        super().__init__()
        self.cfg = cfg = cfg or StyleGAN2Config()
        ch = stylegan2_channels(cfg.channel_multiplier, cfg.narrow)
        body: list[nn.Module] = [ConvLayer(3, ch[cfg.out_size], 1)]
        in_ch = ch[cfg.out_size]
        for level in range(cfg.log_size, 2, -1):
            out_ch = ch[2 ** (level - 1)]
            body.append(DiscriminatorBlock(in_ch, out_ch))
            in_ch = out_ch
        self.conv_body = nn.Sequential(*body)
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 16, ch[4], activate=True), EqualLinear(ch[4], 1)
        )
        self.stddev_group = stddev_group

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Images (B, 3, S, S) -> realness logits (B, 1) [and the list of intermediate features]."""
        if x.shape[-1] != self.cfg.out_size or x.shape[-2] != self.cfg.out_size or x.shape[1] != 3:
            raise ValueError(
                f"StyleGAN2Discriminator: expected (B, 3, {self.cfg.out_size}, {self.cfg.out_size}) images, "
                f"got {tuple(x.shape)}"
            )
        feats = []
        out = x
        for stage in self.conv_body:
            out = stage(out)
            feats.append(out)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        if b % group:
            group = 1  # minibatch stddev needs groups that divide the batch
        std = out.reshape(group, -1, 1, c, h, w)  # (G, B/G, 1, C, H, W)
        std = (
            torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        )  # (B/G, 1, 1, 1)
        out = torch.cat([out, std.repeat(group, 1, h, w)], dim=1)  # (B, C + 1, 4, 4)
        out = self.final_conv(out)
        feats.append(out)
        logits = self.final_linear(out.flatten(1))  # (B, 1)
        return (logits, feats) if return_features else logits
