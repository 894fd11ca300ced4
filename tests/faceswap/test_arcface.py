"""ArcFace IResNet: the insightface arcface_torch key layout loads strictly and computes what it should."""

import math

import pytest
import torch
import torch.nn.functional as F

from repsuite.checkpoints import CheckpointError
from repsuite.faceswap.arcface import IRESNET_LAYERS, ArcMarginHead, iresnet, load_arcface


def bn(keys, prefix, c):
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{name}"] = (c,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def insightface_keys(depth: int) -> dict:
    """Names and shapes of arcface_torch's iresnet{depth} state dict (written from the documented layout)."""
    keys = {"conv1.weight": (64, 3, 3, 3)}
    bn(keys, "bn1", 64)
    keys["prelu.weight"] = (64,)
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), IRESNET_LAYERS[depth], strict=True), 1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            bn(keys, f"{p}.bn1", cin)
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            bn(keys, f"{p}.bn2", planes)
            keys[f"{p}.prelu.weight"] = (planes,)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(keys, f"{p}.bn3", planes)
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                bn(keys, f"{p}.downsample.1", planes)
            cin = planes
    bn(keys, "bn2", 512)
    keys["fc.weight"] = (512, 512 * 49)
    keys["fc.bias"] = (512,)
    bn(keys, "features", 512)
    return keys


def random_state(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight", "features.weight")):
            state[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan = max(1, math.prod(shape[1:])) if len(shape) > 1 else 10
            state[k] = torch.randn(shape, generator=g) / math.sqrt(fan)
    return state


def reference_forward(state, x):
    """IResNet inference written out with functional ops."""

    def bnorm(x, p):
        return F.batch_norm(
            x,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            eps=1e-5,
        )

    x = F.prelu(bnorm(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"), state["prelu.weight"])
    stage = 1
    while f"layer{stage}.0.bn1.weight" in state:
        i = 0
        while f"layer{stage}.{i}.bn1.weight" in state:
            p = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            out = F.conv2d(bnorm(x, f"{p}.bn1"), state[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bnorm(out, f"{p}.bn2"), state[f"{p}.prelu.weight"])
            out = bnorm(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in state:
                x = bnorm(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=2), f"{p}.downsample.1")
            x = out + x
            i += 1
        stage += 1
    x = bnorm(x, "bn2").flatten(1)
    return bnorm(F.linear(x, state["fc.weight"], state["fc.bias"]), "features")


@pytest.mark.parametrize("depth", [18, 34, 50, 100])
def test_module_tree_has_the_insightface_keys(depth):
    ours = {k: tuple(v.shape) for k, v in iresnet(depth).state_dict().items()}
    assert ours == insightface_keys(depth)


def test_backbone_pth_loads_strictly_and_matches_a_plain_recomputation(tmp_path):
    state = random_state(insightface_keys(18))
    torch.save(state, tmp_path / "backbone.pth")
    net = load_arcface(tmp_path / "backbone.pth")
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(net(x), reference_forward(state, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"expected aligned faces \(B, 3, 112, 112\)"):
        net(torch.rand(1, 3, 128, 128))


def test_training_checkpoint_is_told_apart_and_bad_files_are_named(tmp_path):
    state = random_state(insightface_keys(18), seed=1)
    lightning = {
        "state_dict": {**{f"backbone.{k}": v for k, v in state.items()}, "head.weight": torch.zeros(10, 512)}
    }
    torch.save(lightning, tmp_path / "idnet.ckpt")
    net = load_arcface(tmp_path / "idnet.ckpt")
    torch.testing.assert_close(net.fc.weight, state["fc.weight"])
    broken = dict(state)
    broken["layer4.1.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(
        CheckpointError, match=r"broken\.pth: does not match IResNet-18.*layer4\.1\.conv1\.weight"
    ):
        load_arcface(tmp_path / "broken.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth: not an arcface_torch IResNet"):
        load_arcface(tmp_path / "other.pth")


def test_arc_margin_head():
    torch.manual_seed(0)
    head = ArcMarginHead(8, 5, scale=64.0, margin=0.5)
    emb, labels = torch.randn(4, 8), torch.tensor([0, 3, 3, 1])
    logits = head(emb, labels)
    cos = F.normalize(emb, dim=-1) @ F.normalize(head.weight, dim=-1).T
    for b in range(4):
        for c in range(5):
            theta = math.acos(float(cos[b, c].clamp(-1, 1)))
            expect = math.cos(theta + 0.5) if c == labels[b] else float(cos[b, c])
            assert float(logits[b, c]) == pytest.approx(64 * expect, abs=1e-3)
    torch.testing.assert_close(head(emb), cos * 64, rtol=1e-5, atol=1e-4)


def test_smaller_crops_for_cpu_demos_round_trip_through_load_arcface(tmp_path):
    net = iresnet(18, input_size=64)
    assert net.fc.in_features == 512 * 16 and net(torch.rand(2, 3, 64, 64)).shape == (2, 512)
    torch.save(net.state_dict(), tmp_path / "small.pth")
    assert load_arcface(tmp_path / "small.pth").input_size == 64
    with pytest.raises(ValueError, match="multiple of 16"):
        iresnet(18, input_size=100)
