"""Build pretrained face-swap components from official checkpoint files, inferring their sizes from the keys.

``load_stylegan2(path)`` accepts a bare generator state dict or GFPGAN's ``{"params_ema": ...}`` /
``{"params": ...}`` files (``params_ema`` preferred, as GFPGAN does). Everything is read with
``torch.load(weights_only=True)`` (:mod:`repsuite.checkpoints`); a pickled model object is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from repsuite.checkpoints import CheckpointError, check_keys, read_state_dict
from repsuite.faceswap.stylegan2 import StyleGAN2Config, StyleGAN2Discriminator, StyleGAN2Generator

__all__ = ["infer_stylegan2_config", "load_stylegan2", "load_stylegan2_discriminator"]


def infer_stylegan2_config(state: dict, source: str = "state dict") -> StyleGAN2Config:
    """Generator size, mapping depth, channel multiplier and narrow factor from GFPGAN clean key names."""
    noises = [k for k in state if re.fullmatch(r"noises\.noise\d+", k)]
    mlp = [k for k in state if re.fullmatch(r"style_mlp\.\d+\.weight", k)]
    if not noises or not mlp or "constant_input.weight" not in state:
        raise CheckpointError(
            f"{source}: not a StyleGAN2 (GFPGAN clean) generator: expected keys noises.noise<i>, "
            "style_mlp.<i>.weight and constant_input.weight"
        )
    log_size = (len(noises) - 1) // 2 + 2
    narrow = state["constant_input.weight"].shape[1] / 512
    cm = 2.0
    if log_size >= 6:  # the 64 px level is the first one the channel multiplier widens
        c64 = state[f"style_convs.{2 * (6 - 3)}.modulated_conv.weight"].shape[1]
        cm = c64 / (256 * narrow)
    cm = int(cm) if float(cm).is_integer() else cm
    return StyleGAN2Config(
        out_size=2**log_size,
        num_style_feat=state[mlp[0]].shape[1],
        num_mlp=len(mlp),
        channel_multiplier=cm,
        narrow=narrow,
    )


def load_stylegan2(path: str | Path, strict: bool = True) -> StyleGAN2Generator:
    """A :class:`StyleGAN2Generator` with the weights of ``path`` (size etc. inferred from the keys).

    Raises:
        CheckpointError: unreadable or pickled file, not a StyleGAN2 generator, or (``strict``) missing /
            unexpected keys and shape mismatches, listed with the file name.
    """
    state = read_state_dict(path, wrapper_keys=("params_ema", "params", "state_dict", "g_ema"))
    cfg = infer_stylegan2_config(state, str(path))
    gen = StyleGAN2Generator(cfg)
    if strict:
        check_keys(state, gen.state_dict(), str(path), f"StyleGAN2 generator {cfg}")
    gen.load_state_dict(state, strict=strict)
    return gen


def load_stylegan2_discriminator(path: str | Path, strict: bool = True) -> StyleGAN2Discriminator:
    """A :class:`StyleGAN2Discriminator` (BasicSR layout, e.g. GFPGAN's ``net_d``) from ``path``."""
    state = read_state_dict(path, wrapper_keys=("params", "params_ema", "state_dict"))
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"conv_body\.(\d+)\.conv1", k))})
    if "conv_body.0.0.weight" not in state or not blocks:
        raise CheckpointError(f"{path}: not a StyleGAN2 discriminator (expected conv_body.<i>.conv1 keys)")
    log_size = len(blocks) + 2
    c4 = state["final_conv.1.bias"].shape[0]
    narrow = c4 / 512
    c_in = state["conv_body.0.0.weight"].shape[0]  # channels at full resolution
    widened = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}  # levels the channel multiplier scales
    cm = c_in / (widened[2**log_size] * narrow) if 2**log_size in widened else 2
    cm = int(cm) if float(cm).is_integer() else cm
    cfg = StyleGAN2Config(out_size=2**log_size, channel_multiplier=cm, narrow=narrow)
    disc = StyleGAN2Discriminator(cfg)
    if strict:
        check_keys(state, disc.state_dict(), str(path), f"StyleGAN2 discriminator {cfg}")
    disc.load_state_dict(state, strict=strict)
    return disc
