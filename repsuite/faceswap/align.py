"""Face alignment by 5 landmarks: templates, similarity transforms, batched warps, boxes, paste-back.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner, in pixel
coordinates (x, y) with pixel centres at integers (OpenCV's convention). Templates
(shared/reference/faceswap.md §3): insightface's ``arcface_dst`` for 112×112 recognition crops and facexlib's
FFHQ-style 512×512 template used by GFPGAN; the latter scales linearly to any resolution.

Warps are kornia's (``grid_sample`` underneath), so they run batched on the accelerator and are
differentiable (the identity loss crops a 512 px swap to ArcFace's 112 px input inside the graph).
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ARCFACE_112",
    "FFHQ_512",
    "component_boxes",
    "estimate_similarity",
    "face_template",
    "paste_back",
    "to_arcface_input",
    "warp_affine",
]

ARCFACE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
FFHQ_512 = torch.tensor(
    [[192.98, 239.95], [318.90, 240.19], [256.63, 314.02], [201.26, 371.41], [313.09, 371.15]]
)


def face_template(size: int) -> Tensor:
    """The FFHQ-style 5-point template scaled to a ``size``×``size`` aligned face (5, 2)."""
    return FFHQ_512 * (size / 512.0)


def estimate_similarity(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity transform (rotation, uniform scale, translation; Umeyama) mapping src to dst.

    Args:
        src: (..., N, 2) points.
        dst: (..., N, 2) points.

    Returns:
        (..., 2, 3) matrices M with dst ≈ M @ [x, y, 1]ᵀ.
    """
    src, dst = src.double(), dst.double()
    mu_s, mu_d = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    s, d = src - mu_s, dst - mu_d  # (..., N, 2)
    var = s.pow(2).sum((-1, -2)) / src.shape[-2]  # (...)
    cov = d.transpose(-1, -2) @ s / src.shape[-2]  # (..., 2, 2)
    u, sig, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))  # no reflections
    fix = torch.ones_like(sig)
    fix[..., -1] = sign
    rot = u @ torch.diag_embed(fix) @ vh  # (..., 2, 2)
    scale = (sig * fix).sum(-1) / var  # (...)
    lin = scale[..., None, None] * rot
    t = mu_d.transpose(-1, -2) - lin @ mu_s.transpose(-1, -2)  # (..., 2, 1)
    return torch.cat([lin, t], dim=-1).float()  # (..., 2, 3)


def warp_affine(image: Tensor, matrix: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Batched ``cv2.warpAffine`` (kornia): output pixel p shows the input at M⁻¹ p (zeros outside).

    Args:
        image: (B, C, H, W).
        matrix: (B, 2, 3) or (2, 3) input-pixel → output-pixel affine map.
        size: output (height, width).
        mode: ``grid_sample`` interpolation.

    Returns:
        (B, C, height, width).
    """
    m = matrix.to(image.device, torch.float32).expand(image.shape[0], 2, 3)
    # sampled in float32: kornia wants one dtype, and a bf16 matrix would be off by a fraction of a pixel
    out = kornia.geometry.transform.warp_affine(
        image.float(), m, size, mode=mode, padding_mode="zeros", align_corners=True
    )
    return out.to(image.dtype)


def faces_at(faces: Tensor, size: int, who: str) -> Tensor:
    """Aligned faces (B, 3, S, S) resized (antialiased) to (B, 3, size, size) for a network reading them.

    Raises:
        ValueError: ``faces`` is not (B, 3, S, S); the message names ``who`` needed them.
    """
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"{who}: expected faces (B, 3, S, S), got {tuple(faces.shape)}")
    if faces.shape[-2:] == (size, size):
        return faces
    return F.interpolate(faces, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def to_arcface_input(
    faces: Tensor, landmarks: Tensor | None = None, size: int = 112, zoom: float = 1.0
) -> Tensor:
    """Aligned faces (B, 3, S, S) → ArcFace crops (B, 3, size, size), differentiable.

    Without ``landmarks`` (B, 5, 2) the faces are assumed to follow the FFHQ template at their size, so one
    similarity transform maps them onto insightface's template (scaled to ``size``) without re-detecting.
    ``zoom`` < 1 shrinks the template about the crop's centre, so the crop shows more of the head (hair,
    face outline) than insightface's inner-face crop; 1 is the published crop.
    """
    src = landmarks if landmarks is not None else face_template(faces.shape[-1]).to(faces.device)
    dst = ARCFACE_112.to(faces.device)
    dst = (dst - 56.0) * zoom + 56.0  # (5, 2), about the centre of the 112 crop
    m = estimate_similarity(src, dst * (size / 112.0))
    return warp_affine(faces, m, (size, size))


def component_boxes(
    size: int,
    landmarks: Tensor | None = None,
    batch: int = 1,
    eye_half: float = 0.09,
    mouth_half: float = 0.12,
) -> dict[str, Tensor]:
    """Square boxes (B, 4) as (x1, y1, x2, y2) around the left eye, right eye and mouth.

    Centres come from the landmarks (B, 5, 2) when given, else from the FFHQ template at ``size``; half
    sides are ``eye_half``·size and ``mouth_half``·size (the mouth centre is the mean of its corners).
    Ready for :func:`torchvision.ops.roi_align` after prefixing the batch index.
    """
    pts = landmarks if landmarks is not None else face_template(size)[None].expand(batch, 5, 2)
    centres = {"left_eye": pts[:, 0], "right_eye": pts[:, 1], "mouth": (pts[:, 3] + pts[:, 4]) / 2}
    out = {}
    for name, c in centres.items():
        half = (eye_half if "eye" in name else mouth_half) * size
        out[name] = torch.cat([c - half, c + half], dim=-1).float()  # (B, 4)
    return out


def paste_back(
    photo: Tensor, face: Tensor, matrix: Tensor, erode: int = 8, blur: int = 15
) -> tuple[Tensor, Tensor]:
    """Put an aligned (swapped) face back into the photo it was cut from, through a soft mask.

    Args:
        photo: (B, C, H, W) original images.
        face: (B, C, S, S) aligned faces.
        matrix: (B, 2, 3) photo-pixel → aligned-pixel map used to cut the face out.
        erode: pixels (at photo scale) the valid region is shrunk by, hiding the crop border.
        blur: Gaussian kernel size softening the mask edge (odd).

    Returns:
        (composited photos (B, C, H, W), soft masks (B, 1, H, W) in [0, 1]).
    """
    h, w = photo.shape[-2:]
    m = matrix.to(photo.device, torch.float32).expand(photo.shape[0], 2, 3)
    back = kornia.geometry.transform.invert_affine_transform(m)  # aligned → photo pixels
    warped = warp_affine(face, back, (h, w))
    ones = torch.ones_like(face[:, :1])
    mask = warp_affine(ones, back, (h, w))
    if erode > 0:
        mask = -F.max_pool2d(-mask, 2 * erode + 1, stride=1, padding=erode)
    if blur > 1:
        k = blur | 1
        mask = kornia.filters.gaussian_blur2d(mask, (k, k), (k / 4.0, k / 4.0))
    mask = mask.clamp(0, 1)
    return photo * (1 - mask) + warped * mask, mask
