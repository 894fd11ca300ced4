"""5-point alignment: similarity estimation, OpenCV-convention warps, ArcFace crops, boxes, paste-back."""

import math

import torch

from repsuite.faceswap.align import (
    ARCFACE_112,
    component_boxes,
    estimate_similarity,
    face_template,
    paste_back,
    to_arcface_input,
    warp_affine,
)


def similarity(angle_deg, scale, tx, ty):
    a = math.radians(angle_deg)
    return torch.tensor(
        [[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]]
    )


def test_similarity_is_recovered_exactly_and_batched():
    m_true = torch.stack([similarity(20, 1.7, 5.0, -3.0), similarity(-75, 0.4, 100.0, 20.0)])
    src = torch.rand(2, 5, 2) * 100
    dst = src @ m_true[:, :, :2].transpose(1, 2) + m_true[:, :, 2][:, None]
    torch.testing.assert_close(estimate_similarity(src, dst), m_true, rtol=1e-4, atol=1e-3)


def test_warp_follows_opencv_pixel_convention():
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    shift = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])  # input (x, y) lands at (x + 2, y + 1)
    out = warp_affine(img, shift, (8, 8))
    torch.testing.assert_close(out[0, 0, 1:, 2:], img[0, 0, :-1, :-2])
    assert out[0, 0, 0].abs().max() < 1e-5 and out[0, 0, :, :2].abs().max() < 1e-5
    rot = torch.tensor([[0.0, -1.0, 7.0], [1.0, 0.0, 0.0]])  # 90° about the image: exact pixel permutation
    torch.testing.assert_close(warp_affine(img, rot, (8, 8))[0, 0], torch.rot90(img[0, 0], -1))


def test_arcface_crop_puts_the_template_landmarks_on_insightfaces():
    size = 256
    faces = torch.zeros(1, 3, size, size)
    for x, y in face_template(size).round().long().tolist():
        faces[0, :, y - 2 : y + 3, x - 2 : x + 3] = 1.0  # a bright 5×5 dot on each landmark
    crop = to_arcface_input(faces)
    assert crop.shape == (1, 3, 112, 112)
    for x, y in ARCFACE_112.tolist():
        xi, yi = round(x), round(y)
        assert crop[0, 0, yi - 1 : yi + 2, xi - 1 : xi + 2].max() > 0.5, (x, y)
    crop.sum().backward() if crop.requires_grad else None


def test_component_boxes_from_template_and_landmarks():
    boxes = component_boxes(512, batch=2)
    assert set(boxes) == {"left_eye", "right_eye", "mouth"} and boxes["mouth"].shape == (2, 4)
    centre = (boxes["left_eye"][:, :2] + boxes["left_eye"][:, 2:]) / 2
    torch.testing.assert_close(centre, face_template(512)[0].expand(2, 2))
    lm = face_template(64)[None] + 3.0
    b = component_boxes(64, lm)
    torch.testing.assert_close((b["mouth"][:, :2] + b["mouth"][:, 2:]) / 2, ((lm[:, 3] + lm[:, 4]) / 2))
    assert torch.allclose(b["mouth"][:, 2] - b["mouth"][:, 0], torch.tensor(2 * 0.12 * 64))


def test_paste_back_restores_the_photo_where_the_face_came_from():
    yy, xx = torch.meshgrid(torch.arange(200.0), torch.arange(300.0), indexing="ij")
    photo = torch.stack([0.5 + 0.4 * torch.sin(xx / 23 + c) * torch.cos(yy / 31 - c) for c in range(3)])[
        None
    ]  # smooth
    m = similarity(-10, 1.0, -60.0, -40.0)[None]  # photo → aligned 128 crop (well inside the photo)
    crop = warp_affine(photo, m, (128, 128))
    out, mask = paste_back(photo, crop, m, erode=4, blur=9)
    inside = mask[0, 0] > 0.99
    assert inside.sum() > 5000 and mask[0, 0, :3].max() < 1e-6
    torch.testing.assert_close(out[..., inside], photo[..., inside], rtol=0, atol=2e-2)
    swapped, _ = paste_back(photo, torch.zeros_like(crop), m, erode=4, blur=9)
    outside = mask[0, 0] < 1e-6
    assert swapped[..., inside].abs().max() < 1e-2  # mask ≥ 0.99 there
    torch.testing.assert_close(swapped[..., outside], photo[..., outside], rtol=0, atol=1e-5)
