"""Face detection: RetinaFace from its published checkpoints, and a pluggable detector interface.

Any callable mapping uint8 RGB images (B, 3, H, W) to one :class:`Faces` per image is a detector;
:class:`FaceSwapper` takes one. :class:`RetinaFaceDetector` is the RetinaFace of biubug6/Pytorch_Retinaface
in the layout GFPGAN's face helper (facexlib) loads: ``detection_Resnet50_Final.pth`` (ResNet-50 body,
256-channel FPN) and ``mobilenet0.25_Final.pth`` (MobileNet-0.25 body, 64-channel FPN). Facts taken from
that release (shared/reference/faceswap.md §alignment; facexlib ``detection/retinaface.py``):

* body = torchvision ResNet-50 ``layer2..4`` (512/1024/2048 ch) or MobileNetV1-0.25 ``stage1..3``
  (64/128/256 ch); FPN of 1×1 lateral convs + nearest upsampling + 3×3 merges; one SSH context module per
  level; 1×1 heads with 2 anchors per cell: ``ClassHead`` (2), ``BboxHead`` (4), ``LandmarkHead`` (10);
  LeakyReLU slope 0.1 wherever the FPN is at most 64 channels wide, else ReLU;
* input: BGR pixels minus (104, 117, 123), no scaling;
* priors per level (steps 8/16/32, sizes (16, 32)/(64, 128)/(256, 512) px), centre form, row-major cells,
  variances (0.1, 0.2); confidence threshold 0.8 and NMS IoU 0.4 by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsuite.checkpoints import CheckpointError, check_keys, read_state_dict
from repsuite.faceswap.align import face_template

__all__ = [
    "AlignedFaces",
    "FaceDetector",
    "Faces",
    "GivenFaces",
    "RetinaFace",
    "RetinaFaceConfig",
    "RetinaFaceDetector",
    "decode_boxes",
    "decode_landmarks",
    "load_retinaface",
    "prior_boxes",
]

BGR_MEAN = (104.0, 117.0, 123.0)
VARIANCES = (0.1, 0.2)


@dataclass
class Faces:
    """The faces found in one image: boxes (N, 4) as x1, y1, x2, y2, scores (N,), landmarks (N, 5, 2).

    Landmarks: left eye, right eye, nose, left and right mouth corner, in pixels (the alignment order).
    """

    boxes: Tensor
    scores: Tensor
    landmarks: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def areas(self) -> Tensor:
        """Box areas (N,), for picking the largest face."""
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        return wh[:, 0] * wh[:, 1]

    def select(self, index: Tensor | Sequence[int]) -> Faces:
        """The faces at ``index``, in that order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.boxes.device)
        return Faces(self.boxes[index], self.scores[index], self.landmarks[index])


#: A detector: uint8 RGB images (B, 3, H, W) → the faces of each image.
FaceDetector = Callable[[Tensor], list[Faces]]


class GivenFaces:
    """A detector that returns faces known in advance (ground truth, or another tool's detections).

    Args:
        faces: one :class:`Faces` per image, returned in call order (cycled).
    """

    def __init__(self, faces: Sequence[Faces]) -> None:
        self.faces = list(faces)
        self.calls = 0

    def __call__(self, images: Tensor) -> list[Faces]:
        """The next faces for each image of the batch."""
        out = []
        for _ in range(images.shape[0]):
            out.append(self.faces[self.calls % len(self.faces)])
            self.calls += 1
        return out


class AlignedFaces:
    """A detector for images that already are aligned face crops (FFHQ / VGGFace2-HQ style).

    Each image is one face filling the frame: its box is the whole image and its landmarks are the
    aligned-face template scaled to the image, so the swapper's alignment is a plain resize. What
    ``repsuite faceswap swap`` does for aligned folders, and ``repsuite serve`` without ``--detector``.
    """

    def __call__(self, images: Tensor) -> list[Faces]:
        """One face per image of the batch (B, 3, H, W)."""
        _, _, h, w = images.shape
        scale = torch.tensor([w / 512.0, h / 512.0])
        marks = face_template(512) * scale  # (5, 2) pixels of this image
        box = torch.tensor([[0.0, 0.0, float(w), float(h)]])
        return [Faces(box.clone(), torch.ones(1), marks[None].clone()) for _ in range(images.shape[0])]


# ------------------------------------------------------------------------------------------------ network
@dataclass(frozen=True)
class RetinaFaceConfig:
    """The two published RetinaFace variants."""

    body: Literal["resnet50", "mobilenet0.25"] = "resnet50"
    min_sizes: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)

    @property
    def in_channels(self) -> tuple[int, int, int]:
        """Channels of the three body outputs the FPN reads."""
        return (512, 1024, 2048) if self.body == "resnet50" else (64, 128, 256)

    @property
    def out_channels(self) -> int:
        """FPN / SSH / head width."""
        return 256 if self.body == "resnet50" else 64


def _conv_bn(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, slope: float | None = 0.0
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ LeakyReLU with ``slope``; None: no activation). Keys ``0.*``, ``1.*``."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


def _depthwise(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNetV1 block: 3×3 depthwise + BN + LeakyReLU(0.1), 1×1 pointwise + BN + LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.LeakyReLU(0.1),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1),
    )


class MobileNetBody(nn.Module):
    """MobileNetV1 ×0.25 up to ``stage3``: outputs at strides 8, 16, 32 (64, 128, 256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, stride=2, slope=0.1), _depthwise(8, 16, 1), _depthwise(16, 32, 2),
            _depthwise(32, 32, 1), _depthwise(32, 64, 2), _depthwise(64, 64, 1),
        )  # fmt: skip
        self.stage2 = nn.Sequential(_depthwise(64, 128, 2), *[_depthwise(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_depthwise(128, 256, 2), _depthwise(256, 256, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class ResNetBody(nn.Module):
    """torchvision's ResNet-50 up to ``layer4``: outputs of layer2..4 (strides 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    """Top-down pyramid: 1×1 laterals, nearest upsampling, 3×3 merges on the two finer levels."""

    def __init__(self, in_channels: Sequence[int], out: int) -> None:
        super().__init__()
        slope = 0.1 if out <= 64 else 0.0
        self.output1, self.output2, self.output3 = (_conv_bn(c, out, 1, slope=slope) for c in in_channels)
        self.merge1 = _conv_bn(out, out, slope=slope)
        self.merge2 = _conv_bn(out, out, slope=slope)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p3, p4, p5 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Context module: 3×3, "5×5" (two 3×3) and "7×7" (three 3×3) branches, concatenated, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        slope = 0.1 if c <= 64 else 0.0
        self.conv3X3 = _conv_bn(c, c // 2, slope=None)
        self.conv5X5_1 = _conv_bn(c, c // 4, slope=slope)
        self.conv5X5_2 = _conv_bn(c // 4, c // 4, slope=None)
        self.conv7X7_2 = _conv_bn(c // 4, c // 4, slope=slope)
        self.conv7x7_3 = _conv_bn(c // 4, c // 4, slope=None)  # the release's key spelling

    def forward(self, x: Tensor) -> Tensor:
        mid = self.conv5X5_1(x)
        branches = [self.conv3X3(x), self.conv5X5_2(mid), self.conv7x7_3(self.conv7X7_2(mid))]
        return F.relu(torch.cat(branches, dim=1))


class _Head(nn.Module):
    """1×1 conv predicting ``per_anchor`` numbers for each of 2 anchors per cell; (B, H·W·2, per_anchor)."""

    def __init__(self, c: int, per_anchor: int) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(c, 2 * per_anchor, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # (B, H, W, 2·per_anchor): row-major cells, then anchors
        return out.reshape(x.shape[0], -1, self.per_anchor)  # (B, H·W·2, per_anchor)


class RetinaFace(nn.Module):
    """The RetinaFace network: BGR-minus-mean images (B, 3, H, W) → per-prior logits and regressions.

    Returns ``(boxes (B, P, 4), class logits (B, P, 2), landmarks (B, P, 10))`` for the P priors of
    :func:`prior_boxes` at this image size.
    """

    def __init__(self, cfg: RetinaFaceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = ResNetBody() if cfg.body == "resnet50" else MobileNetBody()
        out = cfg.out_channels
        self.fpn = FPN(cfg.in_channels, out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out), SSH(out), SSH(out)
        self.ClassHead = nn.ModuleList(_Head(out, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out, 10) for _ in range(3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """BGR-minus-mean images (B, 3, H, W) → box, class and landmark outputs of every prior."""
        levels = self.fpn(self.body(x))
        feats = [ssh(f) for ssh, f in zip((self.ssh1, self.ssh2, self.ssh3), levels, strict=True)]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)  # (B, P, 4)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)  # (B, P, 2)
        marks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)  # (B, P, 10)
        return boxes, logits, marks


# ------------------------------------------------------------------------------------------------ decoding
def prior_boxes(cfg: RetinaFaceConfig, height: int, width: int) -> Tensor:
    """Anchors (P, 4) as (cx, cy, w, h) relative to the image, in the heads' order.

    Per level: cells row-major over a ceil(H/step) × ceil(W/step) grid, then the level's two sizes.
    """
    out = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * step / height  # (rows,)
        cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * step / width  # (cols,)
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")  # (rows, cols)
        wh = torch.tensor([[s / width, s / height] for s in sizes])  # (2, 2)
        centres = torch.stack([grid_x, grid_y], dim=-1)[:, :, None].expand(rows, cols, len(sizes), 2)
        sizes_ = wh[None, None].expand(rows, cols, len(sizes), 2)
        out.append(torch.cat([centres, sizes_], dim=-1).reshape(-1, 4))  # (rows·cols·2, 4)
    return torch.cat(out)


def decode_boxes(loc: Tensor, priors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Regressions (..., P, 4) → boxes (..., P, 4) as relative x1, y1, x2, y2."""
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: Tensor, priors: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Regressions (..., P, 10) → landmarks (..., P, 5, 2), relative to the image."""
    offsets = pre.unflatten(-1, (5, 2))  # (..., P, 5, 2)
    return priors[..., None, :2] + offsets * variances[0] * priors[..., None, 2:]


class RetinaFaceDetector(nn.Module):
    """RetinaFace as a :data:`FaceDetector`: uint8 RGB images → faces above ``threshold`` after NMS.

    Args:
        net: the network (see :func:`load_retinaface`).
        threshold: minimum face probability (0.8 in GFPGAN's face helper).
        nms_iou: NMS IoU threshold (0.4).
        max_size: images whose longer side exceeds this are detected on a downscaled copy (coordinates are
            returned at full size); None keeps the original size, as the face helper does.
    """

    def __init__(
        self, net: RetinaFace, threshold: float = 0.8, nms_iou: float = 0.4, max_size: int | None = 1280
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.threshold, self.nms_iou, self.max_size = threshold, nms_iou, max_size
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Faces]:
        """uint8 RGB (B, 3, H, W) → one :class:`Faces` per image, best first, in pixels of ``images``."""
        from torchvision.ops import nms

        h, w = images.shape[-2:]
        scale = 1.0
        x = images.to(self.mean.device).float().flip(1) - self.mean  # RGB → BGR, minus the BGR mean
        if self.max_size and max(h, w) > self.max_size:
            scale = self.max_size / max(h, w)
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=True)
        loc, logits, marks = self.net(x)
        priors = prior_boxes(self.net.cfg, *x.shape[-2:]).to(x.device)
        size = torch.tensor([w, h], dtype=torch.float32, device=x.device)  # relative → original pixels
        boxes = decode_boxes(loc, priors) * size.repeat(2)  # (B, P, 4)
        points = decode_landmarks(marks, priors) * size  # (B, P, 5, 2)
        probs = logits.softmax(-1)[..., 1]  # (B, P)
        out = []
        for b in range(images.shape[0]):
            keep = (probs[b] > self.threshold).nonzero()[:, 0]
            order = probs[b, keep].argsort(descending=True)
            keep = keep[order]
            keep = keep[nms(boxes[b, keep], probs[b, keep], self.nms_iou)]
            out.append(Faces(boxes[b, keep].cpu(), probs[b, keep].cpu(), points[b, keep].cpu()))
        return out


def load_retinaface(path: str | Path, **detector_args) -> RetinaFaceDetector:
    """A :class:`RetinaFaceDetector` with the weights of a published RetinaFace checkpoint.

    The body is read from the keys (``body.layer*``: ResNet-50; ``body.stage*``: MobileNet-0.25); a
    ``module.`` prefix (the release's DataParallel save) is removed. Loaded weights-only, every key checked.

    Raises:
        CheckpointError: unreadable file, not RetinaFace, or missing / unexpected keys and shape mismatches,
            listed with the file name.
    """
    state = read_state_dict(path)
    if any(k.startswith("body.layer1.") for k in state):
        cfg = RetinaFaceConfig("resnet50")
    elif any(k.startswith("body.stage1.") for k in state):
        cfg = RetinaFaceConfig("mobilenet0.25")
    else:
        raise CheckpointError(
            f"{path}: not a RetinaFace checkpoint (expected body.layer1.* (ResNet-50) or body.stage1.* "
            f"(MobileNet-0.25) keys; found e.g. {sorted(state)[:4]})"
        )
    net = RetinaFace(cfg)
    check_keys(state, net.state_dict(), str(path), f"RetinaFace ({cfg.body})")
    net.load_state_dict(state)
    return RetinaFaceDetector(net, **detector_args)
