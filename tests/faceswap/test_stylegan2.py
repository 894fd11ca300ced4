"""StyleGAN2 prior: GFPGAN/BasicSR key layouts load strictly, outputs match a plain re-computation.

The key lists below are written from the documented layouts (shared/reference/faceswap.md §1 and BasicSR's
discriminator), independently of the modules, so a renamed submodule fails here.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from repsuite.checkpoints import CheckpointError
from repsuite.faceswap import (
    StyleGAN2Config,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    load_stylegan2,
    load_stylegan2_discriminator,
)


def channels(size: int, cm: float, narrow: float) -> int:
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm}
    return int(base[size] * narrow)


def gfpgan_generator_keys(size: int, cm: float = 1, narrow: float = 1.0, d: int = 512, mlp: int = 8) -> dict:
    """Names and shapes of GFPGAN's StyleGAN2GeneratorClean state dict."""
    keys = {}
    for i in range(mlp):
        keys[f"style_mlp.{2 * i + 1}.weight"] = (d, d)
        keys[f"style_mlp.{2 * i + 1}.bias"] = (d,)
    c4 = channels(4, cm, narrow)
    keys["constant_input.weight"] = (1, c4, 4, 4)

    def style_conv(prefix, cin, cout):
        keys[f"{prefix}.modulated_conv.weight"] = (1, cout, cin, 3, 3)
        keys[f"{prefix}.modulated_conv.modulation.weight"] = (cin, d)
        keys[f"{prefix}.modulated_conv.modulation.bias"] = (cin,)
        keys[f"{prefix}.weight"] = (1,)
        keys[f"{prefix}.bias"] = (1, cout, 1, 1)

    def to_rgb(prefix, cin):
        keys[f"{prefix}.modulated_conv.weight"] = (1, 3, cin, 1, 1)
        keys[f"{prefix}.modulated_conv.modulation.weight"] = (cin, d)
        keys[f"{prefix}.modulated_conv.modulation.bias"] = (cin,)
        keys[f"{prefix}.bias"] = (1, 3, 1, 1)

    style_conv("style_conv1", c4, c4)
    to_rgb("to_rgb1", c4)
    log = int(math.log2(size))
    cin = c4
    for n, level in enumerate(range(3, log + 1)):
        cout = channels(2**level, cm, narrow)
        style_conv(f"style_convs.{2 * n}", cin, cout)
        style_conv(f"style_convs.{2 * n + 1}", cout, cout)
        to_rgb(f"to_rgbs.{n}", cout)
        cin = cout
    for i in range((log - 2) * 2 + 1):
        r = 2 ** ((i + 5) // 2)
        keys[f"noises.noise{i}"] = (1, 1, r, r)
    return keys


def random_state(keys: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) * 0.5 for k, shape in keys.items()}
    for k in state:
        if k.endswith("modulation.bias"):
            state[k] = 1 + 0.1 * state[k]
    return state


def reference_generator(state: dict, z: torch.Tensor, size: int, mlp: int = 8) -> torch.Tensor:
    """StyleGAN2 (clean) written out per sample with plain convolutions and the stored noises."""
    w = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    for i in range(mlp):
        w = F.leaky_relu(
            F.linear(w, state[f"style_mlp.{2 * i + 1}.weight"], state[f"style_mlp.{2 * i + 1}.bias"]), 0.2
        )

    def modconv(x, prefix, style, demod, up):
        wt = state[f"{prefix}.modulated_conv.weight"][0]
        s = F.linear(
            style,
            state[f"{prefix}.modulated_conv.modulation.weight"],
            state[f"{prefix}.modulated_conv.modulation.bias"],
        )
        outs = []
        for b in range(x.shape[0]):
            wb = wt * s[b][None, :, None, None]
            if demod:
                wb = wb / torch.sqrt(wb.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
            xb = x[b : b + 1]
            if up:
                xb = F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
            outs.append(F.conv2d(xb, wb, padding=wt.shape[-1] // 2))
        return torch.cat(outs)

    def style_conv(x, prefix, noise_i, up=False):
        out = modconv(x, prefix, w, True, up) * math.sqrt(2)
        out = out + state[f"{prefix}.weight"] * state[f"noises.noise{noise_i}"]
        return F.leaky_relu(out + state[f"{prefix}.bias"], 0.2)

    def rgb(x, prefix, skip):
        out = modconv(x, prefix, w, False, False) + state[f"{prefix}.bias"]
        if skip is not None:
            out = out + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return out

    x = state["constant_input.weight"].expand(z.shape[0], -1, -1, -1)
    x = style_conv(x, "style_conv1", 0)
    skip = rgb(x, "to_rgb1", None)
    for n in range(int(math.log2(size)) - 2):
        x = style_conv(x, f"style_convs.{2 * n}", 2 * n + 1, up=True)
        x = style_conv(x, f"style_convs.{2 * n + 1}", 2 * n + 2)
        skip = rgb(x, f"to_rgbs.{n}", skip)
    return skip


def test_gfpgan_key_layout_loads_strictly_and_matches_a_plain_recomputation(tmp_path):
    keys = gfpgan_generator_keys(64, cm=1, narrow=0.125, d=32, mlp=2)
    state = random_state(keys)
    torch.save({"params_ema": state, "params": {"unused": torch.zeros(1)}}, tmp_path / "g.pth")
    gen = load_stylegan2(tmp_path / "g.pth")
    cfg = gen.cfg
    assert (cfg.out_size, cfg.num_style_feat, cfg.num_mlp, cfg.channel_multiplier, cfg.narrow) == (
        64,
        32,
        2,
        1,
        0.125,
    )
    assert gen.num_latent == 10 and cfg.num_layers == 9
    z = torch.randn(3, 32)
    image, latent = gen([z], randomize_noise=False, return_latents=True)
    assert image.shape == (3, 3, 64, 64) and latent.shape == (3, 10, 32)
    # float64 on both sides: the comparison checks the arithmetic, not rounding
    state64 = {k: v.double() for k, v in state.items()}
    image64, _ = gen.double()([z.double()], randomize_noise=False)
    torch.testing.assert_close(image64, reference_generator(state64, z.double(), 64, mlp=2))


def test_official_512_cmul1_layout(tmp_path):
    """The shape of StyleGAN2_512_Cmul1_FFHQ_B12G4_scratch_800k.pth (params_ema)."""
    keys = gfpgan_generator_keys(512, cm=1)
    assert len(keys) == 16 + 1 + 5 + 4 + 7 * (5 + 5 + 4) + 15
    torch.save({"params_ema": {k: torch.zeros(s) for k, s in keys.items()}}, tmp_path / "ffhq512.pth")
    gen = load_stylegan2(tmp_path / "ffhq512.pth")
    assert (gen.cfg.out_size, gen.cfg.channel_multiplier, gen.num_latent) == (512, 1, 16)
    assert gen.style_convs[-1].modulated_conv.weight.shape == (1, 32, 32, 3, 3)


def test_generator_api_truncation_mixing_and_noise():
    torch.manual_seed(0)
    gen = StyleGAN2Generator(StyleGAN2Config(out_size=32, num_style_feat=16, num_mlp=2, narrow=0.0625))
    with torch.no_grad():
        gen.style_conv1.weight.fill_(1.0)  # noise strengths start at 0
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    a, _ = gen(z1, randomize_noise=False)
    b, _ = gen(z1, randomize_noise=False)
    torch.testing.assert_close(a, b)  # stored noise: deterministic
    c, _ = gen(z1, randomize_noise=True)
    assert not torch.allclose(a, c)
    mean = gen.mean_latent(64)
    _, lat = gen(z1, truncation=0.0, truncation_latent=mean, randomize_noise=False, return_latents=True)
    torch.testing.assert_close(lat, mean.expand(2, gen.num_latent, -1).contiguous())
    _, mixed = gen([z1, z2], inject_index=3, return_latents=True)
    w1, w2 = gen.style_mlp(z1), gen.style_mlp(z2)
    torch.testing.assert_close(mixed[:, :3], w1[:, None].expand(-1, 3, -1))
    torch.testing.assert_close(mixed[:, 3:], w2[:, None].expand(-1, gen.num_latent - 3, -1))
    wplus = torch.randn(2, gen.num_latent, 16)
    img, _ = gen(wplus, input_is_latent=True)
    assert img.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="truncation_latent"):
        gen(z1, truncation=0.5)
    with pytest.raises(ValueError, match=r"latent must be \(B, 8, 16\)"):
        gen.synthesis(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(out_size=48)


def test_bad_generator_checkpoints_are_named(tmp_path):
    keys = gfpgan_generator_keys(32, cm=1, narrow=0.125, d=16, mlp=2)
    state = random_state(keys)
    del state["to_rgbs.1.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError,
        match=r"bad\.pth: does not match StyleGAN2 generator.*'to_rgbs\.1\.bias'.*'extra\.weight'",
    ):
        load_stylegan2(tmp_path / "bad.pth")
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module object
    with pytest.raises(
        CheckpointError,
        match=r"pickled\.pth: not a state dict readable with torch\.load\(weights_only=True\)",
    ):
        load_stylegan2(tmp_path / "pickled.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a StyleGAN2"):
        load_stylegan2(tmp_path / "other.pth")


def basicsr_discriminator_keys(size: int, cm: float, narrow: float) -> dict:
    """Names and shapes of BasicSR's StyleGAN2Discriminator state dict."""
    keys = {}
    c = channels(size, cm, narrow)
    keys["conv_body.0.0.weight"] = (c, 3, 1, 1)
    keys["conv_body.0.1.bias"] = (c,)
    cin = c
    for n, level in enumerate(range(int(math.log2(size)), 2, -1), start=1):
        cout = channels(2 ** (level - 1), cm, narrow)
        keys[f"conv_body.{n}.conv1.0.weight"] = (cin, cin, 3, 3)
        keys[f"conv_body.{n}.conv1.1.bias"] = (cin,)
        keys[f"conv_body.{n}.conv2.1.weight"] = (cout, cin, 3, 3)
        keys[f"conv_body.{n}.conv2.2.bias"] = (cout,)
        keys[f"conv_body.{n}.skip.1.weight"] = (cout, cin, 1, 1)
        cin = cout
    c4 = channels(4, cm, narrow)
    keys["final_conv.0.weight"] = (c4, cin + 1, 3, 3)
    keys["final_conv.1.bias"] = (c4,)
    keys["final_linear.0.weight"] = (c4, c4 * 16)
    keys["final_linear.0.bias"] = (c4,)
    keys["final_linear.1.weight"] = (1, c4)
    keys["final_linear.1.bias"] = (1,)
    return keys


def reference_discriminator(state: dict, x: torch.Tensor) -> torch.Tensor:
    """BasicSR's discriminator arithmetic written out: blur [1,3,3,1], equalised scales, stddev feature."""
    k = torch.tensor([1.0, 3, 3, 1])
    blur = (k[:, None] * k[None]) / 64

    def eq_conv(x, w, stride=1, pad=0, bias=None):
        return F.conv2d(x, w / math.sqrt(w.shape[1] * w.shape[2] * w.shape[3]), bias, stride, pad)

    def act(x, b):
        return F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * math.sqrt(2)

    def down(x, ksize):
        p = 2 + ksize - 1
        x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
        return F.conv2d(x, blur.to(x.dtype).expand(x.shape[1], 1, 4, 4), groups=x.shape[1])

    out = act(eq_conv(x, state["conv_body.0.0.weight"]), state["conv_body.0.1.bias"])
    n = 1
    while f"conv_body.{n}.conv1.0.weight" in state:
        p = f"conv_body.{n}"
        h = act(eq_conv(out, state[f"{p}.conv1.0.weight"], pad=1), state[f"{p}.conv1.1.bias"])
        h = act(eq_conv(down(h, 3), state[f"{p}.conv2.1.weight"], stride=2), state[f"{p}.conv2.2.bias"])
        s = eq_conv(down(out, 1), state[f"{p}.skip.1.weight"], stride=2)
        out = (h + s) / math.sqrt(2)
        n += 1
    b, c, hh, ww = out.shape
    g = min(b, 4)
    std = (
        torch.sqrt(out.view(g, -1, 1, c, hh, ww).var(0, unbiased=False) + 1e-8)
        .mean([2, 3, 4], keepdim=True)
        .squeeze(2)
    )
    out = torch.cat([out, std.repeat(g, 1, hh, ww)], 1)
    out = act(eq_conv(out, state["final_conv.0.weight"], pad=1), state["final_conv.1.bias"])
    w0, w1 = state["final_linear.0.weight"], state["final_linear.1.weight"]
    h = F.leaky_relu(
        F.linear(out.flatten(1), w0 / math.sqrt(w0.shape[1])) + state["final_linear.0.bias"], 0.2
    ) * math.sqrt(2)
    return F.linear(h, w1 / math.sqrt(w1.shape[1]), state["final_linear.1.bias"])


def test_discriminator_basicsr_layout_loads_strictly_and_matches(tmp_path):
    keys = basicsr_discriminator_keys(64, cm=1, narrow=0.125)
    state = random_state(keys, seed=1)
    torch.save({"params": state}, tmp_path / "net_d.pth")
    disc = load_stylegan2_discriminator(tmp_path / "net_d.pth")
    assert (disc.cfg.out_size, disc.cfg.channel_multiplier, disc.cfg.narrow) == (64, 1, 0.125)
    x = torch.randn(4, 3, 64, 64)
    logits, feats = disc(x, return_features=True)
    assert logits.shape == (4, 1) and len(feats) == 6 and feats[-1].shape == (4, 64, 4, 4)
    state64 = {k: v.double() for k, v in state.items()}
    torch.testing.assert_close(disc.double()(x.double()), reference_discriminator(state64, x.double()))
    with pytest.raises(ValueError, match=r"expected \(B, 3, 64, 64\)"):
        disc(torch.randn(1, 3, 32, 32))
    assert StyleGAN2Discriminator(
        StyleGAN2Config(out_size=512, channel_multiplier=1)
    ).state_dict().keys() == (basicsr_discriminator_keys(512, 1, 1.0).keys())
