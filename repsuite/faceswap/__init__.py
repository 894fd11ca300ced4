"""Face swapping with a StyleGAN2 generative prior (thesis chapter 3)."""

from repsuite.faceswap.arcface import ArcMarginHead, IResNet, iresnet, load_arcface
from repsuite.faceswap.loading import infer_stylegan2_config, load_stylegan2, load_stylegan2_discriminator
from repsuite.faceswap.stylegan2 import (
    StyleGAN2Config,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    apply_cs_sft,
    stylegan2_channels,
)

__all__ = [
    "ArcMarginHead",
    "IResNet",
    "StyleGAN2Config",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "apply_cs_sft",
    "infer_stylegan2_config",
    "iresnet",
    "load_arcface",
    "load_stylegan2",
    "load_stylegan2_discriminator",
    "stylegan2_channels",
]
