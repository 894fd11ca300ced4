"""Face-swap generator (Fig. 3.7), component discriminators and losses at tiny sizes."""

import pytest
import torch

from repsuite.faceswap.discriminators import FacialComponentDiscriminator, crop_components
from repsuite.faceswap.losses import (
    IdentityLoss,
    ReconstructionLoss,
    WeakFeatureMatchingLoss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    r1_penalty,
)
from repsuite.faceswap.model import FaceSwapGenerator, FaceSwapGeneratorConfig, warp_by_flow
from repsuite.faceswap.stylegan2 import StyleGAN2Config, StyleGAN2Generator

TINY = {"out_size": 32, "num_style_feat": 32, "num_mlp": 2, "narrow": 0.0625, "id_dim": 16}


def _randomize_id_affines(gen):
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if "affine.weight" in name or "condition_s" in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("injection", ["modulation", "adain"])
@pytest.mark.parametrize("skips", [False, True])
def test_generator_shapes_identity_dependence_and_frozen_prior(injection, skips):
    torch.manual_seed(0)
    gen = FaceSwapGenerator(FaceSwapGeneratorConfig(**TINY, id_injection=injection, unet_skips=skips))
    _randomize_id_affines(gen)
    x, ids = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 16)
    gen.eval()
    out = gen(x, ids)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(gen(x, ids), out)  # eval: stored noise, deterministic
    assert not torch.allclose(gen(x, torch.randn(2, 16)), out, atol=1e-4)  # the identity matters
    gen.train()
    gen(x, ids).square().mean().backward()
    assert all(p.grad is None for p in gen.stylegan.parameters())  # the prior is frozen by default
    assert gen.conv_body_first.weight.grad is not None and gen.id_up[0].conv1.affine.weight.grad is not None
    assert set(map(id, gen.trainable_parameters())) == {id(p) for p in gen.parameters() if p.requires_grad}


@pytest.mark.parametrize("injection", ["modulation", "adain"])
@pytest.mark.parametrize("warp", [False, True])
def test_fixed_source_generator_equals_the_general_path(injection, warp):
    # the folded ID blocks are plain convolutions: same swaps as G(target, id) up to float rounding (the
    # instance norm of the AdaIN variant magnifies rounding in low-variance channels: 1e-4 there)
    torch.manual_seed(0)
    cfg = FaceSwapGeneratorConfig(**TINY, id_injection=injection, unet_skips=True, skip_warp=warp)
    gen = FaceSwapGenerator(cfg).eval()
    _randomize_id_affines(gen)
    x, ident = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(1, 16)
    fixed = gen.fixed_source(ident)
    expected = gen(x, ident.expand(3, -1))
    atol = 1e-5 if injection == "modulation" else 1e-4
    torch.testing.assert_close(fixed(x), expected, rtol=1e-4, atol=atol)
    torch.testing.assert_close(gen.fixed_source(ident[0])(x[:1]), expected[:1], rtol=1e-4, atol=atol)
    # another identity gives other swaps; the generator's own layers are shared, not copied
    assert not torch.allclose(gen.fixed_source(torch.randn(16))(x), expected, atol=1e-4)
    shared = {id(p) for p in gen.parameters()}
    assert fixed.generator is gen and all(
        not p.requires_grad for p in fixed.parameters() if id(p) not in shared
    )
    with pytest.raises(ValueError, match=r"one identity \(16,\)"):
        gen.fixed_source(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"target faces \(B, 3, 32, 32\)"):
        fixed(torch.rand(1, 3, 16, 16))


def test_warp_by_flow_moves_features_by_the_flow_in_pixels():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    torch.testing.assert_close(warp_by_flow(x, torch.zeros(1, 2, 8, 8)), x)
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0] = -2.0  # every pixel reads from two pixels to its left: the dot moves right by two
    moved = warp_by_flow(x, flow)
    assert moved[0, 0, 3, 6] == 1.0 and moved.sum() == 1.0


def test_warped_skips_start_as_plain_skips_and_learn_a_flow():
    torch.manual_seed(0)
    plain = FaceSwapGenerator(FaceSwapGeneratorConfig(**TINY, unet_skips=True)).eval()
    warped = FaceSwapGenerator(FaceSwapGeneratorConfig(**TINY, unet_skips=True, skip_warp=True)).eval()
    missing = warped.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("skip_flow.") for k in missing)
    _randomize_id_affines(plain)
    warped.load_state_dict(plain.state_dict(), strict=False)
    x, ids = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 16)
    torch.testing.assert_close(warped(x, ids), plain(x, ids))  # zero flow at initialisation
    warped(x, ids).square().mean().backward()
    assert all(head[2].weight.grad.abs().sum() > 0 for head in warped.skip_flow)


def test_cs_sft_starts_as_identity_so_the_prior_is_reproduced():
    torch.manual_seed(0)
    gen = FaceSwapGenerator(FaceSwapGeneratorConfig(**TINY)).eval()
    x, ids = torch.rand(1, 3, 32, 32), torch.randn(1, 16)
    with torch.no_grad():
        latent = gen.final_mlp(torch.zeros(1, gen.final_mlp[0].in_features))  # any latent
    conditions_off = gen.stylegan.synthesis(
        latent.view(1, gen.stylegan.num_latent, -1), gen.stylegan.stored_noise()
    )
    gen.final_mlp[-1].weight.data.zero_()
    gen.final_mlp[-1].bias.data.copy_(latent[0])
    torch.testing.assert_close(gen(x, ids), conditions_off)  # α = 1, β = 0 at initialisation


def test_prior_mismatch_and_bad_inputs_are_explained():
    prior = StyleGAN2Generator(StyleGAN2Config(out_size=64, num_style_feat=32, num_mlp=2, narrow=0.0625))
    with pytest.raises(ValueError, match="a 512 px prior needs 512 px faces"):
        FaceSwapGenerator(FaceSwapGeneratorConfig(**TINY), prior=prior)
    gen = FaceSwapGenerator(FaceSwapGeneratorConfig(**TINY, train_prior=True))
    assert all(p.requires_grad for p in gen.stylegan.parameters())
    with pytest.raises(ValueError, match=r"expected target faces \(B, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        gen(torch.rand(1, 3, 64, 64), torch.randn(1, 16))
    with pytest.raises(ValueError, match=r"expected identity embeddings \(1, 16\)"):
        gen(torch.rand(1, 3, 32, 32), torch.randn(1, 512))


def test_component_crops_and_discriminator():
    img = torch.zeros(2, 3, 64, 64)
    img[:, :, 28:33, 22:27] = 1.0  # a dot on the left-eye template position at 64 px (24.1, 30.0)
    crops = crop_components(img, eye_size=16, mouth_size=24)
    assert crops["left_eye"].shape == (2, 3, 16, 16) and crops["mouth"].shape == (2, 3, 24, 24)
    assert crops["left_eye"][:, :, 6:10, 6:10].mean() > 0.5 and crops["right_eye"].max() == 0
    d = FacialComponentDiscriminator(width=8)
    logits, feats = d(crops["mouth"], return_features=True)
    assert logits.shape == (2, 1, 6, 6) and [f.shape[1] for f in feats] == [16, 32]
    keys = set(d.state_dict())
    assert {"conv1.0.weight", "conv1.1.bias", "conv2.1.weight", "conv2.2.bias", "final_conv.0.weight",
            "final_conv.0.bias"} <= keys  # fmt: skip


def test_losses():
    swap, target = torch.zeros(3, 3, 4, 4), torch.ones(3, 3, 4, 4)
    same = torch.tensor([True, False, True])
    assert ReconstructionLoss(10.0)(swap, target, same) == pytest.approx(10.0)
    assert ReconstructionLoss(10.0)(swap, target, torch.zeros(3, dtype=torch.bool)) == 0
    e = torch.randn(4, 8)
    assert IdentityLoss(10.0)(e, e) == pytest.approx(0.0, abs=1e-5)
    assert IdentityLoss(10.0)(e, -e) == pytest.approx(20.0, abs=1e-4)
    logits = torch.tensor([0.0, 2.0])
    assert generator_adversarial_loss(logits) == pytest.approx(
        float(torch.nn.functional.softplus(-logits).mean())
    )
    assert discriminator_adversarial_loss(logits, logits) == pytest.approx(
        float(torch.nn.functional.softplus(-logits).mean() + torch.nn.functional.softplus(logits).mean())
    )
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert r1_penalty((x * 3).sum((1, 2, 3)), x) == pytest.approx(9.0 * 48)
    fm = WeakFeatureMatchingLoss(5.0, num_layers=1)
    f = [torch.zeros(1, 2), torch.zeros(1, 2)]
    r = [torch.ones(1, 2) * 100, torch.ones(1, 2)]
    assert fm(f, r) == pytest.approx(5.0)  # only the last layer counts
