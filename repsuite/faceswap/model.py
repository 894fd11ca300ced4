"""The thesis's face-swap generator (Fig. 3.7): ID-injection Enc-Dec driving a StyleGAN2 prior through CS-SFT.

Data flow for a target face x (B, 3, S, S) in [-1, 1] and the source's ArcFace embedding id (B, 512)::

    x ─ conv_body_first (1×1) ─ conv_body_down × log2(S)−2 (residual, ↓2) ─▶ (B, C4, 4, 4)
        └─ (unet_skips: encoder features kept per level; off in the thesis, "Enc-Dec")
    bottleneck: final_conv ─ id_blocks_bottleneck × IDModulationBlock(id) ─▶ F_latent
    W+ = MLP(F_latent) (B, num_latent, 512)                                          (Eq. 3.3)
    decoder, per level 8 … S: conv_body_up (residual, ↑2) ─ IDModulationBlock(id) ─▶ F_spatial
        condition_scale / condition_shift (3×3 convs) ─▶ α, β for that level
    StyleGAN2 prior: synthesis(W+, conditions=[α_8, β_8, …]) with CS-SFT (Eq. 3.7–3.8) ─▶ swap (B, 3, S, S)

An ID Modulation Block (Eq. 3.5–3.6) is a residual block whose two 3×3 convolutions are demodulated
modulated convolutions with style FC(id); ``id_injection="adain"`` replaces them with conv + AdaIN(id)
(Eq. 3.4, SimSwap / FaceShifter), the thesis's motivating comparison, and ``unet_skips=True`` restores
GFPGAN's U-Net skips, so both design choices can be ablated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from repsuite.faceswap.stylegan2 import StyleGAN2Config, StyleGAN2Generator, stylegan2_channels
from repsuite.ops import modulated_conv2d, modulated_weight

__all__ = [
    "CompiledFixedSource",
    "FaceSwapGenerator",
    "FaceSwapGeneratorConfig",
    "FixedSourceGenerator",
    "IDModulationBlock",
    "to_channels_last",
]


@dataclass
class FaceSwapGeneratorConfig:
    """Sizes and switches of :class:`FaceSwapGenerator`.

    Args:
        out_size: image size S (the prior's; 512 in the thesis).
        num_style_feat: StyleGAN2 style width (512).
        num_mlp: the prior's mapping layers (8).
        channel_multiplier: the prior's channel multiplier (1 for the FFHQ-512 prior).
        narrow: the prior's narrow factor.
        unet_narrow: Enc-Dec channels relative to the prior's (0.5, as GFPGAN).
        id_dim: identity embedding width (ArcFace 512).
        id_injection: ``"modulation"`` (thesis) or ``"adain"`` (SimSwap-style, for the ablation).
        unet_skips: add encoder features to the decoder (GFPGAN's U-Net); off in the thesis.
        unet_skip_max_res: with ``unet_skips``, only decoder levels up to this resolution get them (None:
            all). Fine-level skips hand the target's edges (face outline, eye positions) straight to the
            output, which a swap must move to the source's; coarse ones carry pose and expression.
        skip_warp: warp every U-Net skip by a flow predicted from the identity-modulated decoder features
            (deformable skips, coarse to fine). A swap must move the target's outline and eyes to the
            source's proportions; spatially-invariant modulated convolutions shift features poorly, a
            flow field does it directly. The flow heads start at zero (plain skips).
        id_blocks_bottleneck: ID Modulation Blocks at the bottleneck.
        sft_half: channel-split SFT (half the channels pass through).
        train_prior: fine-tune the StyleGAN2 prior (frozen by default).
    """

    out_size: int = 512
    num_style_feat: int = 512
    num_mlp: int = 8
    channel_multiplier: float = 1
    narrow: float = 1.0
    unet_narrow: float = 0.5
    id_dim: int = 512
    id_injection: Literal["modulation", "adain"] = "modulation"
    unet_skips: bool = False
    unet_skip_max_res: int | None = None
    skip_warp: bool = False
    id_blocks_bottleneck: int = 2
    sft_half: bool = True
    train_prior: bool = False

    def prior_config(self) -> StyleGAN2Config:
        """The StyleGAN2 configuration the prior must have."""
        return StyleGAN2Config(
            self.out_size, self.num_style_feat, self.num_mlp, self.channel_multiplier, self.narrow
        )


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class ResBlock(nn.Module):
    """GFPGAN-clean residual block: conv → LReLU → resample → conv → LReLU, plus resample → 1×1 skip."""

    def __init__(self, in_ch: int, out_ch: int, mode: Literal["down", "up"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.factor = 0.5 if mode == "down" else 2.0

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H·f, W·f)."""
        out = _lrelu(self.conv1(x))
        out = F.interpolate(out, scale_factor=self.factor, mode="bilinear", align_corners=False)
        out = _lrelu(self.conv2(out))
        x = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return out + self.skip(x)


class IDModulatedConv(nn.Module):
    """3×3 conv whose weights are modulated by FC(id) and demodulated (Eq. 3.5–3.6)."""

    def __init__(self, channels: int, id_dim: int) -> None:
        super().__init__()
        self.affine = nn.Linear(id_dim, channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.ones_(self.affine.bias)  # starts as a plain (demodulated) conv
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) / math.sqrt(channels * 9))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, id_embed: Tensor) -> Tensor:
        """(B, C, H, W), id (B, id_dim) -> (B, C, H, W)."""
        out = modulated_conv2d(x, self.weight, self.affine(id_embed), demodulate=True)
        return out + self.bias.view(1, -1, 1, 1)

    @torch.no_grad()
    def fold(self, id_embed: Tensor) -> nn.Conv2d:
        """One identity (id_dim,) baked in: a plain 3×3 conv computing ``forward(x, id)`` for every x.

        Modulation and demodulation only depend on the identity, so for a fixed source they are done once
        on the weights (C, C, 3, 3) instead of on every frame's activations.
        """
        style = self.affine(id_embed.to(self.weight.dtype))[None]  # (1, C_in)
        w = modulated_weight(self.weight, style)[0]  # (C_out, C_in, 3, 3), as forward's modulated_conv2d
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, 1, 1).to(w.device, w.dtype).requires_grad_(False)
        conv.weight.copy_(w)
        conv.bias.copy_(self.bias)
        return conv


class AdaINConv(nn.Module):
    """3×3 conv then AdaIN with scale/shift from the id embedding (Eq. 3.4; the ablation's alternative)."""

    def __init__(self, channels: int, id_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine = nn.Linear(id_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, x: Tensor, id_embed: Tensor) -> Tensor:
        """(B, C, H, W), id (B, id_dim) -> (B, C, H, W)."""
        out = F.instance_norm(self.conv(x), eps=1e-8)
        gamma, beta = rearrange(self.affine(id_embed), "b (two c) -> two b c 1 1", two=2)  # (B, C, 1, 1) each
        return gamma * out + beta

    @torch.no_grad()
    def fold(self, id_embed: Tensor) -> nn.Module:
        """One identity (id_dim,) baked in: the AdaIN scale and shift computed once (the norm stays per x)."""
        gamma, beta = rearrange(
            self.affine(id_embed.to(self.affine.weight.dtype)), "(two c) -> two 1 c 1 1", two=2
        )
        return _FixedAdaIN(self.conv, gamma, beta)


class _FixedAdaIN(nn.Module):
    """:class:`AdaINConv` for one identity: conv, instance norm, a stored scale (1, C, 1, 1) and shift."""

    def __init__(self, conv: nn.Conv2d, gamma: Tensor, beta: Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("gamma", gamma)
        self.register_buffer("beta", beta)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.gamma * F.instance_norm(self.conv(x), eps=1e-8) + self.beta


class IDModulationBlock(nn.Module):
    """Residual block with identity injection in both convolutions of its residual branch."""

    def __init__(self, channels: int, id_dim: int, injection: Literal["modulation", "adain"] = "modulation"):
        super().__init__()
        layer = IDModulatedConv if injection == "modulation" else AdaINConv
        self.conv1 = layer(channels, id_dim)
        self.conv2 = layer(channels, id_dim)

    def forward(self, x: Tensor, id_embed: Tensor) -> Tensor:
        """(B, C, H, W), id (B, id_dim) -> (B, C, H, W)."""
        branch = self.conv2(_lrelu(self.conv1(x, id_embed)), id_embed)
        return (x + branch) / math.sqrt(2.0)

    def fold(self, id_embed: Tensor) -> nn.Module:
        """This block for one identity (id_dim,): a module ``x -> forward(x, id)`` of plain layers."""
        return _FoldedIDBlock(self.conv1.fold(id_embed), self.conv2.fold(id_embed))


class _FoldedIDBlock(nn.Module):
    """:class:`IDModulationBlock` with its identity folded into the layers (see ``fold``)."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return (x + self.conv2(_lrelu(self.conv1(x)))) / math.sqrt(2.0)


def warp_by_flow(x: Tensor, flow: Tensor) -> Tensor:
    """Resample features (B, C, H, W) at each pixel + flow (B, 2, H, W) (dx, dy in pixels), bilinearly."""
    b, _, h, w = x.shape
    identity = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(b, 2, 3)
    grid = F.affine_grid(identity, list(x.shape), align_corners=False)  # (B, H, W, 2) in [-1, 1]
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)  # pixels -> grid units
    offset = rearrange(flow, "b two h w -> b h w two") * scale  # (B, H, W, 2)
    return F.grid_sample(x, grid + offset, mode="bilinear", padding_mode="border", align_corners=False)


class FaceSwapGenerator(nn.Module):
    """The thesis's generator: G(target, id(source)) -> swap.

    Args:
        cfg: sizes and switches.
        prior: a StyleGAN2 generator with ``cfg.prior_config()``'s architecture (e.g. from
            :func:`repsuite.faceswap.load_stylegan2`); a randomly initialised one when None (tests, demos).
    """

    def __init__(self, cfg: FaceSwapGeneratorConfig | None = None, prior: StyleGAN2Generator | None = None):
        super().__init__()
        self.cfg = cfg = cfg or FaceSwapGeneratorConfig()
        want = cfg.prior_config()
        if prior is None:
            prior = StyleGAN2Generator(want)
        elif (prior.cfg.out_size, prior.cfg.num_style_feat) != (want.out_size, want.num_style_feat) or (
            prior.channels != stylegan2_channels(want.channel_multiplier, want.narrow)
        ):
            raise ValueError(
                f"FaceSwapGenerator: the StyleGAN2 prior is {prior.cfg} but the generator is configured for "
                f"{want}; set out_size / channel_multiplier / narrow to the prior's (a 512 px prior needs "
                "512 px faces)"
            )
        self.stylegan = prior
        self.stylegan.requires_grad_(cfg.train_prior)
        gan_ch = self.stylegan.channels
        unet = {r: int(c * cfg.unet_narrow) for r, c in gan_ch.items()}
        levels = [2**i for i in range(2, int(math.log2(cfg.out_size)) + 1)]  # 4 … S
        self.conv_body_first = nn.Conv2d(3, unet[cfg.out_size], 1)
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet[r], unet[r // 2], "down") for r in reversed(levels[1:])
        )
        self.final_conv = nn.Conv2d(unet[4], unet[4], 3, 1, 1)
        self.id_bottleneck = nn.ModuleList(
            IDModulationBlock(unet[4], cfg.id_dim, cfg.id_injection) for _ in range(cfg.id_blocks_bottleneck)
        )
        n_latent = self.stylegan.num_latent
        self.final_mlp = nn.Sequential(
            nn.Linear(unet[4] * 16, cfg.num_style_feat),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(cfg.num_style_feat, n_latent * cfg.num_style_feat),
        )
        self.conv_body_up = nn.ModuleList(ResBlock(unet[r // 2], unet[r], "up") for r in levels[1:])
        self.id_up = nn.ModuleList(
            IDModulationBlock(unet[r], cfg.id_dim, cfg.id_injection) for r in levels[1:]
        )
        sft_ch = {r: gan_ch[r] // 2 if cfg.sft_half else gan_ch[r] for r in levels[1:]}
        self.condition_scale = nn.ModuleList(self._condition(unet[r], sft_ch[r], 1.0) for r in levels[1:])
        self.condition_shift = nn.ModuleList(self._condition(unet[r], sft_ch[r], 0.0) for r in levels[1:])
        self.skip_flow = (
            nn.ModuleList(self._condition(unet[r], 2, 0.0) for r in levels[1:]) if cfg.skip_warp else None
        )

    @staticmethod
    def _condition(in_ch: int, out_ch: int, bias: float) -> nn.Sequential:
        head = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, 1, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        )
        nn.init.zeros_(head[2].weight)  # α = 1, β = 0 at the start: the prior's features pass unchanged
        nn.init.constant_(head[2].bias, bias)
        return head

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen prior (all of it with ``train_prior``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, target: Tensor, id_embed: Tensor, randomize_noise: bool | None = None) -> Tensor:
        """Swap: target faces (B, 3, S, S) in [-1, 1] + source identity (B, id_dim) -> (B, 3, S, S).

        ``randomize_noise`` defaults to the module's mode (fresh noise in training, stored noise in eval).
        """
        self._check_target(target)
        if id_embed.shape != (target.shape[0], self.cfg.id_dim):
            raise ValueError(
                f"FaceSwapGenerator: expected identity embeddings ({target.shape[0]}, {self.cfg.id_dim}), "
                f"got {tuple(id_embed.shape)}"
            )
        ident = F.normalize(id_embed.float(), dim=-1).to(target.dtype)
        bottleneck = [partial(block, id_embed=ident) for block in self.id_bottleneck]
        up = [partial(block, id_embed=ident) for block in self.id_up]
        return self._swap(target, bottleneck, up, randomize_noise)

    @torch.no_grad()
    def fixed_source(self, id_embed: Tensor) -> FixedSourceGenerator:
        """This generator for one source identity (id_dim,) or (1, id_dim): ``G_id(target) = G(target, id)``.

        The ID Modulation Blocks' modulation and demodulation depend on the identity alone, so they are
        folded into plain convolution weights once; every target (video frames, a folder) then runs
        through ordinary convolutions. A snapshot: fold again after the weights change. The W+ code is
        not cached, because here it comes from the ID-modulated *target* features (Eq. 3.3).
        """
        if id_embed.ndim == 2 and id_embed.shape[0] == 1:
            id_embed = id_embed[0]
        if id_embed.shape != (self.cfg.id_dim,):
            raise ValueError(
                f"FaceSwapGenerator.fixed_source: expected one identity ({self.cfg.id_dim},) or "
                f"(1, {self.cfg.id_dim}), got {tuple(id_embed.shape)}"
            )
        ident = F.normalize(id_embed.float(), dim=-1)
        return FixedSourceGenerator(
            self, [b.fold(ident) for b in self.id_bottleneck], [b.fold(ident) for b in self.id_up]
        )

    def _check_target(self, target: Tensor) -> None:
        s = self.cfg.out_size
        if target.ndim != 4 or target.shape[1:] != (3, s, s):
            raise ValueError(
                f"FaceSwapGenerator: expected target faces (B, 3, {s}, {s}), got {tuple(target.shape)}"
            )

    def _swap(
        self,
        target: Tensor,
        bottleneck: Sequence[Callable[[Tensor], Tensor]],
        up_blocks: Sequence[Callable[[Tensor], Tensor]],
        randomize_noise: bool | None,
    ) -> Tensor:
        """The data flow of the module docstring, with the ID blocks given as functions of the features."""
        s = self.cfg.out_size
        feat = _lrelu(self.conv_body_first(target))
        skips = []
        for block in self.conv_body_down:
            skips.insert(0, feat)
            feat = block(feat)
        feat = _lrelu(self.final_conv(feat))  # (B, C4, 4, 4)
        for id_block in bottleneck:
            feat = id_block(feat)
        latent = self.final_mlp(feat.flatten(1))  # (B, num_latent · D)
        latent = rearrange(latent, "b (n d) -> b n d", n=self.stylegan.num_latent)  # (B, num_latent, D)
        conditions = []
        flow = None  # (B, 2, H, W): where each skip feature is read from, in pixels of its level
        for i, (up, id_block) in enumerate(zip(self.conv_body_up, up_blocks, strict=True)):
            feat = up(feat)
            if self.cfg.unet_skips and feat.shape[-1] <= (self.cfg.unet_skip_max_res or s):
                skip = skips[i]
                if self.skip_flow is not None:
                    flow_here = self.skip_flow[i](feat)  # (B, 2, H, W)
                    if flow is not None:  # refine the coarser level's flow, in this level's pixels
                        flow_here = flow_here + 2 * F.interpolate(flow, scale_factor=2.0, mode="bilinear")
                    flow = flow_here
                    skip = warp_by_flow(skip, flow)
                feat = feat + skip
            feat = id_block(feat)
            conditions += [self.condition_scale[i](feat), self.condition_shift[i](feat)]
        randomize = self.training if randomize_noise is None else randomize_noise
        noise = None if randomize else self.stylegan.stored_noise()
        return self.stylegan.synthesis(latent, noise, conditions, self.cfg.sft_half)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer of ``module`` channels-last, in place; returns ``module``.

    ``nn.Module.to(memory_format=...)`` refuses the prior's 5-D modulated weights (1, C_out, C_in, k, k);
    their ``[0]`` views are converted by the convolution itself. With bf16 on CPUs with AMX (and on tensor
    cores) channels-last convolutions run several times faster than NCHW ones (benchmarks/faceswap.py).
    """
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.ndim == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module


class FixedSourceGenerator(nn.Module):
    """A :class:`FaceSwapGenerator` with one source identity folded in (``FaceSwapGenerator.fixed_source``).

    Shares every layer but the ID Modulation Blocks with the generator it came from.
    """

    def __init__(
        self, generator: FaceSwapGenerator, bottleneck: list[nn.Module], up: list[nn.Module]
    ) -> None:
        super().__init__()
        self.generator = generator
        self.bottleneck = nn.ModuleList(bottleneck)
        self.up = nn.ModuleList(up)

    def forward(self, target: Tensor, randomize_noise: bool | None = None) -> Tensor:
        """Target faces (B, 3, S, S) in [-1, 1] -> the source's identity on them, (B, 3, S, S)."""
        self.generator._check_target(target)
        return self.generator._swap(target, list(self.bottleneck), list(self.up), randomize_noise)

    def compiled(self) -> CompiledFixedSource:
        """This generator through ``torch.compile`` with Inductor's freezing, channels-last.

        With the identity folded in, every weight is fixed for the life of this object, so Inductor may
        treat them as constants (freezing): it pre-packs them for the convolution library once and fuses
        the bias, activation and noise arithmetic around the convolutions. Converts this module's (and the
        shared generator's) 4-D weights to channels-last in place. Measured on a 2-core CPU (fp32, B = 4,
        benchmarks/faceswap.py): ~1.5x the uncompiled fixed-source path at 256 and 512 px, after about a
        minute of compiling per source and batch shape. Weights changed later are not seen.
        """
        to_channels_last(self)
        return CompiledFixedSource(self)


class CompiledFixedSource:
    """A :class:`FixedSourceGenerator` run through ``torch.compile`` with freezing (see ``compiled()``)."""

    def __init__(self, fixed: FixedSourceGenerator) -> None:
        self.fixed = fixed
        self.generator = fixed.generator
        self._compiled = torch.compile(fixed)

    def __call__(self, target: Tensor, randomize_noise: bool | None = None) -> Tensor:
        """Target faces (B, 3, S, S) in [-1, 1] -> swapped faces (B, 3, S, S), channels-last."""
        import torch._inductor.config as inductor_config

        self.generator._check_target(target)  # a clear error before tracing, not an Inductor one
        # freezing is read when a graph is compiled: the first call per batch shape
        with inductor_config.patch(freezing=True):
            target = target.contiguous(memory_format=torch.channels_last)
            return self._compiled(target, randomize_noise=randomize_noise)
