"""ArcFace identity encoder: IResNet-18/34/50/100 with insightface ``arcface_torch`` key names, margin head.

``load_arcface(path)`` builds the network from an official ``backbone.pth`` (or a repsuite identity-training
checkpoint, told apart automatically), inferring the depth from the keys, and returns it frozen in eval
mode: (B, 3, 112, 112) aligned faces in [-1, 1] → (B, 512) un-normalised embeddings, as insightface's.
The layout follows deepinsight/insightface recognition/arcface_torch/backbones/iresnet.py
(shared/reference/faceswap.md §3).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsuite.checkpoints import CheckpointError, check_keys, read_state_dict

__all__ = ["IRESNET_LAYERS", "ArcMarginHead", "IResNet", "iresnet", "load_arcface"]

IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN, plus the (downsampled) input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, eps=1e-5)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C, H / stride, W / stride)."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """ArcFace's IResNet (112×112 inputs, as every published checkpoint).

    Args:
        layers: blocks per stage (see :data:`IRESNET_LAYERS`).
        num_features: embedding width (512).
        dropout: dropout before the embedding layer (0 in inference).
        input_size: face crop size, a multiple of 16 (112 for published weights; smaller crops such as 64
            make CPU demos ~3× cheaper; only ``fc``'s input width depends on it).
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"IResNet: input_size must be a multiple of 16, got {input_size}")
        self.layers_cfg = tuple(layers)
        self.input_size = input_size
        self.crop_zoom = 1.0  # template zoom of the crop it was trained on (see align.to_arcface_input)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            stage = [IBasicBlock(in_planes, planes, stride=2)] + [
                IBasicBlock(planes, planes) for _ in range(blocks - 1)
            ]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            in_planes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * (input_size // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # insightface keeps the final BN's scale at 1

    def forward(self, x: Tensor) -> Tensor:
        """Aligned crops (B, 3, s, s) in [-1, 1], s = ``input_size`` -> embeddings (B, num_features)."""
        s = self.input_size
        if x.shape[-2:] != (s, s) or x.shape[1] != 3:
            raise ValueError(f"IResNet: expected aligned faces (B, 3, {s}, {s}), got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, s/16, s/16)
        x = self.dropout(torch.flatten(self.bn2(x), 1))  # (B, 512·(s/16)²)
        return self.features(self.fc(x))


def iresnet(depth: int, num_features: int = 512, dropout: float = 0.0, input_size: int = 112) -> IResNet:
    """IResNet-18/34/50/100."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"IResNet depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
    return IResNet(IRESNET_LAYERS[depth], num_features, dropout, input_size)


class ArcMarginHead(nn.Module):
    """Additive angular margin classifier (ArcFace): logits s·cos(θ_y + m) for the label, s·cos θ elsewhere.

    Args:
        num_features: embedding width.
        num_classes: identities.
        scale: s (64 in insightface).
        margin: m in radians (0.5).
    """

    def __init__(self, num_features: int, num_classes: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, num_features).normal_(0, 0.01))
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Embeddings (B, D) [and labels (B,)] -> logits (B, num_classes); the margin needs labels."""
        cos = F.linear(F.normalize(embeddings.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))
        if labels is None:
            return cos * self.scale
        cos = cos.clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])  # (B, 1)
        theta = torch.acos(target)
        # past π − m the margin would make the logit larger again; fall back as insightface does
        with_margin = torch.where(
            theta + self.margin < math.pi,
            torch.cos(theta + self.margin),
            target - self.margin * math.sin(self.margin),
        )
        return cos.scatter(1, labels[:, None], with_margin) * self.scale


def _arcface_state(path: str | Path) -> dict[str, Tensor]:
    """The backbone weights of an official ``backbone.pth`` or of a repsuite identity-training checkpoint."""
    state = read_state_dict(path, wrapper_keys=("state_dict",))
    if any(k.startswith("backbone.") for k in state):  # a Lightning checkpoint of repsuite's IdentityModule
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_arcface(path: str | Path, strict: bool = True) -> IResNet:
    """A frozen IResNet in eval mode with the weights of ``path`` (depth inferred from the keys).

    Accepts insightface arcface_torch ``backbone.pth`` files and checkpoints of repsuite's identity-encoder
    training (the ``backbone.`` part is used, the margin head dropped).

    Raises:
        CheckpointError: unreadable or pickled file, not an IResNet, or keys/shapes that do not match.
    """
    state = _arcface_state(path)
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.bn1\.weight$", k))}
        blocks.append(len(idx))
    depth = next((d for d, layers in IRESNET_LAYERS.items() if tuple(blocks) == layers), None)
    if depth is None:
        raise CheckpointError(
            f"{path}: not an arcface_torch IResNet-18/34/50/100 (blocks per stage {tuple(blocks)}; expected "
            f"one of {sorted(IRESNET_LAYERS.values())})"
        )
    num_features, fc_in = state["fc.weight"].shape if "fc.weight" in state else (512, 512 * 49)
    input_size = 16 * round((fc_in / 512) ** 0.5)  # 112 for every published checkpoint
    net = iresnet(depth, num_features, input_size=input_size)
    if strict:
        check_keys(state, net.state_dict(), str(path), f"IResNet-{depth}")
    net.load_state_dict(state, strict=strict)
    net.crop_zoom = _trained_crop_zoom(path)
    return net.eval().requires_grad_(False)


def _trained_crop_zoom(path: str | Path) -> float:
    """The crop zoom an IdentityModule checkpoint was trained with (1.0 for published backbones)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # .safetensors or TorchScript: published weights, the standard crop
        return 1.0
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    return float(hp.get("crop_zoom", 1.0))
