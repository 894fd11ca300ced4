"""Facial-component discriminators (left eye, right eye, mouth) on ROI-aligned crops, GFPGAN key layout.

GFPGAN's ``FacialComponentDiscriminator`` is a small VGG-style stack of StyleGAN2 conv layers; the names
here (``conv1`` … ``conv5``, ``final_conv``, each a ``ConvLayer`` sequence) match its checkpoints
(``GFPGANv1_net_d_left_eye.pth`` etc.). Crops come from :func:`torchvision.ops.roi_align` on boxes from
per-image landmarks or the aligned-face template (:func:`repsuite.faceswap.align.component_boxes`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from repsuite.faceswap.align import component_boxes
from repsuite.faceswap.stylegan2 import ConvLayer

__all__ = ["COMPONENTS", "FacialComponentDiscriminator", "component_crop_sizes", "crop_components"]

COMPONENTS = ("left_eye", "right_eye", "mouth")


class FacialComponentDiscriminator(nn.Module):
    """Realness logits map (B, 1, h, w) of a component crop (B, 3, size, size), plus two feature maps.

    Args:
        width: channels of the first layer (64 in GFPGAN; 128 and 256 follow).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.conv1 = ConvLayer(3, w1, 3)
        self.conv2 = ConvLayer(w1, w2, 3, downsample=True)
        self.conv3 = ConvLayer(w2, w2, 3)
        self.conv4 = ConvLayer(w2, w3, 3, downsample=True)
        self.conv5 = ConvLayer(w3, w3, 3)
        self.final_conv = ConvLayer(w3, 1, 3, bias=True, activate=False)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Crops (B, 3, s, s) -> logits (B, 1, s/4, s/4) [and features after conv3 and conv5]."""
        f1 = self.conv3(self.conv2(self.conv1(x)))  # (B, 2w, s/2, s/2)
        f2 = self.conv5(self.conv4(f1))  # (B, 4w, s/4, s/4)
        out = self.final_conv(f2)
        return (out, [f1, f2]) if return_features else out


def component_crop_sizes(resolution: int) -> tuple[int, int]:
    """Eye and mouth crop sizes for faces of ``resolution`` px: GFPGAN's 80 and 120 at 512 px, scaled.

    Scaling keeps crops at about their native pixel size (a 64 px face's eye is ~10 px wide; resampling it to
    80 px would only cost time); 16 and 24 px are the floor so the discriminators' two ↓2 stages still see
    a 4×4 / 6×6 map.
    """
    return max(16, round(80 * resolution / 512)), max(24, round(120 * resolution / 512))


def crop_components(
    images: Tensor,
    landmarks: Tensor | None = None,
    eye_size: int | None = None,
    mouth_size: int | None = None,
) -> dict[str, Tensor]:
    """ROI-aligned left-eye, right-eye and mouth crops of aligned faces (B, 3, S, S).

    Boxes come from ``landmarks`` (B, 5, 2) when the dataset provides them, else from the aligned-face
    template; crops are (B, 3, eye_size, eye_size) and (B, 3, mouth_size, mouth_size), by default
    :func:`component_crop_sizes` of S (GFPGAN: 80 and 120 at 512 px).
    """
    b, _, s, _ = images.shape
    default_eye, default_mouth = component_crop_sizes(s)
    eye_size, mouth_size = eye_size or default_eye, mouth_size or default_mouth
    boxes = component_boxes(s, landmarks.float() if landmarks is not None else None, batch=b)
    idx = torch.arange(b, device=images.device, dtype=images.dtype)[:, None]
    out = {}
    for name in COMPONENTS:
        rois = torch.cat([idx, boxes[name].to(images.device, images.dtype)], dim=1)  # (B, 5)
        size = mouth_size if name == "mouth" else eye_size
        out[name] = roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out
