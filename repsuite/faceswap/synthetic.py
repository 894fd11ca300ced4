"""Synthetic aligned faces whose identity and attributes are separate parameters, in the real dataset layouts.

Identity (kept by a swap): face shape (width, height, jaw), skin tone, eye size / spacing / iris colour,
eyebrow weight, nose length and width, hair colour and fringe height. Attributes (taken from the target):
pose (yaw / pitch shift the inner features and the head), expression (mouth opening and smile), background
colour, and lighting (a brightness gradient across the image). Because a face is a function of
(identity, attributes), the ground-truth swap of any (source, target) pair is simply
``render(identity(source), attributes(target))``, which the evaluation uses.

Layouts written by :func:`write_synthetic_faces`::

    ROOT/vggface2_hq/n000000/0000.jpg …      one folder per identity (VGGFace2-HQ)
    ROOT/ffhq/images1024x1024/00000/00000.png …   flat numbered files in thousands folders (FFHQ),
                                                  rendered at ``resolution`` (not 1024) to stay small
    ROOT/<layout>/landmarks.json              {relative path: [[x, y] × 5]} (left eye, right eye, nose,
                                              mouth corners), repsuite's optional landmark file
    ROOT/pairs/{source,target,ground_truth}/<name>.png and pairs/identities.json
                                              held-out identities for ``repsuite faceswap eval``; each
                                              entry also records the renderer's truth: the source's
                                              identity parameters, the target's attributes
    ROOT/judge/images/<nnnnn>.png, judge/params.json
                                              faces of further identities with their rendering
                                              parameters, drawn from a separate random stream, for
                                              training an independent judge (:mod:`repsuite.faceswap.judge`)
    ROOT/recon/images/<nnnnn>.png, recon/params.json
                                              the same from a third stream, for the swapper's
                                              face-reconstruction network (:mod:`repsuite.faceswap.recon`)

Faces are aligned like FFHQ crops: eyes and mouth sit near the 5-point template, moved a little by pose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "ATTRIBUTE_FIELDS",
    "IDENTITY_FIELDS",
    "FaceAttributes",
    "FaceIdentity",
    "SyntheticFacesSpec",
    "render_face",
    "sample_attributes",
    "sample_identity",
    "write_face_video",
    "write_judge_faces",
    "write_synthetic_faces",
]

# Flat parameter vectors of an identity / of attributes, in this order (colours as three channels); these
# are the regression targets of the synthetic judge and the truth recorded next to the evaluation pairs.
IDENTITY_FIELDS = (
    "face_width", "face_height", "jaw", "skin_r", "skin_g", "skin_b", "eye_size", "eye_spacing",
    "iris_r", "iris_g", "iris_b", "brow", "nose_length", "nose_width", "hair_r", "hair_g", "hair_b", "fringe",
)  # fmt: skip
ATTRIBUTE_FIELDS = (
    "yaw",
    "pitch",
    "mouth_open",
    "smile",
    "background_r",
    "background_g",
    "background_b",
    "light",
)


@dataclass
class FaceIdentity:
    """Parameters a face swap must transfer (all in [0, 1] unless noted)."""

    face_width: float
    face_height: float
    jaw: float
    skin: tuple[float, float, float]
    eye_size: float
    eye_spacing: float
    iris: tuple[float, float, float]
    brow: float
    nose_length: float
    nose_width: float
    hair: tuple[float, float, float]
    fringe: float

    def vector(self) -> list[float]:
        """The parameters in :data:`IDENTITY_FIELDS` order."""
        return _flatten(self)


@dataclass
class FaceAttributes:
    """Parameters a face swap must keep from the target."""

    yaw: float  # [-1, 1]
    pitch: float  # [-1, 1]
    mouth_open: float
    smile: float  # [-1, 1]
    background: tuple[float, float, float]
    light: float  # [-1, 1], direction of the brightness gradient

    def vector(self) -> list[float]:
        """The parameters in :data:`ATTRIBUTE_FIELDS` order."""
        return _flatten(self)


def _flatten(params: FaceIdentity | FaceAttributes) -> list[float]:
    out: list[float] = []
    for f in fields(params):
        value = getattr(params, f.name)
        out += [float(v) for v in value] if isinstance(value, tuple) else [float(value)]
    return out


def _rand(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _colour(
    g: torch.Generator, base: tuple[float, float, float], spread: float
) -> tuple[float, float, float]:
    return tuple(min(1.0, max(0.0, b + _rand(g, -spread, spread))) for b in base)  # type: ignore[return-value]


def sample_identity(g: torch.Generator) -> FaceIdentity:
    """A random identity."""
    tone = _rand(g)
    skin = (0.35 + 0.55 * tone, 0.25 + 0.5 * tone, 0.18 + 0.45 * tone)
    return FaceIdentity(
        face_width=_rand(g), face_height=_rand(g), jaw=_rand(g), skin=_colour(g, skin, 0.05),
        eye_size=_rand(g), eye_spacing=_rand(g), iris=(_rand(g, 0, 0.6), _rand(g, 0, 0.6), _rand(g, 0, 0.8)),
        brow=_rand(g), nose_length=_rand(g), nose_width=_rand(g),
        hair=(_rand(g, 0, 0.9), _rand(g, 0, 0.7), _rand(g, 0, 0.5)), fringe=_rand(g),
    )  # fmt: skip


def sample_attributes(g: torch.Generator) -> FaceAttributes:
    """Random pose, expression, background and lighting."""
    return FaceAttributes(
        yaw=_rand(g, -1, 1), pitch=_rand(g, -1, 1), mouth_open=_rand(g), smile=_rand(g, -1, 1),
        background=(_rand(g), _rand(g), _rand(g)), light=_rand(g, -1, 1),
    )  # fmt: skip


def _soft(d: Tensor, edge: float) -> Tensor:
    """1 inside (d < 1), 0 outside, smooth over ``edge`` (in units of d)."""
    return torch.sigmoid((1 - d) / edge)


def render_face(identity: FaceIdentity, attrs: FaceAttributes, size: int) -> tuple[Tensor, Tensor]:
    """Render one aligned face.

    Returns:
        image (3, size, size) float in [0, 1] and its 5 landmarks (5, 2) in pixel coordinates.
    """
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.tensor(attrs.background).view(3, 1, 1).expand(3, size, size).clone()
    img, (fx, fy) = _draw_head(img, identity, attrs, xs, ys)
    img, eyes, eye_y = _draw_eyes(img, identity, attrs, xs, ys, fx, fy)
    img, nose = _draw_nose(img, identity, xs, ys, fx, eye_y)
    img, mouth = _draw_mouth(img, attrs, xs, ys, fx, fy)
    shade = 1 + 0.18 * attrs.light * (xs - 0.5) * 2  # lighting: a horizontal brightness gradient
    img = (img * shade).clamp(0, 1)
    lm = torch.tensor([*eyes, nose, *mouth]) * (size - 1)  # (5, 2) pixel coordinates
    return img, lm


def _draw_head(
    img: Tensor, i: FaceIdentity, a: FaceAttributes, xs: Tensor, ys: Tensor
) -> tuple[Tensor, tuple[float, float]]:
    """Head and hair; returns the image and the centre (x, y) the inner features sit around."""
    dx, dy = 0.05 * a.yaw, 0.04 * a.pitch  # pose moves the whole head a little and the features more
    cx, cy = 0.5 + 0.5 * dx, 0.54 + 0.5 * dy
    fw, fh = 0.25 + 0.07 * i.face_width, 0.31 + 0.06 * i.face_height
    # head: an ellipse whose lower half narrows with the jaw parameter
    yrel = (ys - cy) / fh
    narrow = 1 - (0.15 + 0.2 * i.jaw) * yrel.clamp(min=0)
    head = _soft((((xs - cx) / (fw * narrow)) ** 2 + yrel**2).sqrt(), 0.03)
    hair_d = (((xs - cx) / (fw * 1.1)) ** 2 + ((ys - cy + 0.05) / (fh * 1.05)) ** 2).sqrt()
    hair = _soft(hair_d, 0.03) * torch.sigmoid((cy - fh * (0.35 + 0.35 * i.fringe) - ys) / 0.01)
    img = img * (1 - head) + torch.tensor(i.skin).view(3, 1, 1) * head
    img = img * (1 - hair) + torch.tensor(i.hair).view(3, 1, 1) * hair
    return img, (cx + dx, cy + dy)  # inner features follow the pose more strongly


def _draw_eyes(
    img: Tensor, i: FaceIdentity, a: FaceAttributes, xs: Tensor, ys: Tensor, fx: float, fy: float
) -> tuple[Tensor, list[tuple[float, float]], float]:
    """Eye whites, irises and brows; returns the image, the two eye landmarks and the eyes' height."""
    spacing = 0.115 + 0.035 * i.eye_spacing
    eye_y = fy - 0.06
    er = 0.028 + 0.014 * i.eye_size
    landmarks = []
    for side in (-1, 1):
        ex = fx + side * spacing
        white = _soft((((xs - ex) / (er * 1.6)) ** 2 + ((ys - eye_y) / er) ** 2).sqrt(), 0.08)
        iris = _soft(
            (((xs - ex - 0.01 * a.yaw) / (er * 0.75)) ** 2 + ((ys - eye_y) / (er * 0.75)) ** 2).sqrt(), 0.08
        )
        img = img * (1 - white) + white * 0.95
        img = img * (1 - iris) + torch.tensor(i.iris).view(3, 1, 1) * iris
        brow_d = ((xs - ex) / (er * 2.0)) ** 2 + ((ys - eye_y + er * 1.9) / (0.006 + 0.008 * i.brow)) ** 2
        brow = _soft(brow_d.sqrt(), 0.1)
        img = img * (1 - brow) + brow * torch.tensor(i.hair).view(3, 1, 1) * 0.7
        landmarks.append((ex, eye_y))
    return img, landmarks, eye_y


def _draw_nose(
    img: Tensor, i: FaceIdentity, xs: Tensor, ys: Tensor, fx: float, eye_y: float
) -> tuple[Tensor, tuple[float, float]]:
    """A shaded nose below the eyes; returns the image and the nose-tip landmark."""
    nl, nw = 0.06 + 0.04 * i.nose_length, 0.02 + 0.018 * i.nose_width
    ny = eye_y + 0.03
    in_nose = ((ys - ny) / nl).clamp(0, 1)
    nose = (
        _soft((((xs - fx) / (nw * (0.3 + in_nose))) ** 2).sqrt(), 0.15)
        * (ys > ny).float()
        * (ys < ny + nl).float()
    )
    img = img * (1 - 0.25 * nose) + 0.25 * nose * torch.tensor(i.skin).view(3, 1, 1) * 0.6
    return img, (fx, ny + nl)


def _draw_mouth(
    img: Tensor, a: FaceAttributes, xs: Tensor, ys: Tensor, fx: float, fy: float
) -> tuple[Tensor, list[tuple[float, float]]]:
    """The mouth (opening and smile from the attributes); returns the image and the two corner landmarks."""
    my = fy + 0.135
    mw, mh = 0.06 + 0.01 * a.smile, 0.006 + 0.03 * a.mouth_open
    curve = my - 0.02 * a.smile * (1 - ((xs - fx) / mw) ** 2)
    mouth = _soft((((xs - fx) / mw) ** 2 + ((ys - curve) / mh) ** 2).sqrt(), 0.15)
    img = img * (1 - mouth) + mouth * torch.tensor([0.55, 0.15, 0.18]).view(3, 1, 1)
    return img, [(fx - mw, my), (fx + mw, my)]


@dataclass
class SyntheticFacesSpec:
    """Sizes of a synthetic face set (defaults: a CPU demo at 64 px)."""

    resolution: int = 64
    identities: int = 200  # a swapper trained on few identities learns them, not identity transfer
    images_per_identity: int = 4
    ffhq_images: int = 200
    eval_identities: int = 20
    eval_pairs: int = 100
    singleton_identities: int = 1  # identity folders with a single image (cannot form a same-identity pair)
    judge_images: int = 4000  # faces of further identities with their parameters (0: no judge/ folder)
    recon_images: int = 3000  # the same for the swapper's face-reconstruction network (0: no recon/ folder)
    seed: int = 0


def _save(img: Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    kwargs = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(arr).save(path, **kwargs)


def write_synthetic_faces(root: str | Path, spec: SyntheticFacesSpec | None = None) -> Path:
    """Write the layouts listed in the module docstring under ``root`` and return it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny ops per face: threads only add overhead (~50x slower)
    try:
        return _write_synthetic_faces(Path(root), spec or SyntheticFacesSpec())
    finally:
        torch.set_num_threads(threads)


def _write_synthetic_faces(root: Path, spec: SyntheticFacesSpec) -> Path:
    g = torch.Generator().manual_seed(spec.seed)
    r = spec.resolution
    vgg, ffhq = root / "vggface2_hq", root / "ffhq"
    lm_vgg: dict[str, list] = {}
    for k in range(spec.identities + spec.singleton_identities):
        ident = sample_identity(g)
        count = spec.images_per_identity if k < spec.identities else 1
        for j in range(count):
            img, lm = render_face(ident, sample_attributes(g), r)
            rel = f"n{k:06d}/{j:04d}.jpg"
            _save(img, vgg / rel)
            lm_vgg[rel] = lm.tolist()
    (vgg / "landmarks.json").write_text(json.dumps(lm_vgg))
    lm_ffhq: dict[str, list] = {}
    for n in range(spec.ffhq_images):
        img, lm = render_face(sample_identity(g), sample_attributes(g), r)
        rel = f"images1024x1024/{n // 1000 * 1000:05d}/{n:05d}.png"
        _save(img, ffhq / rel)
        lm_ffhq[rel] = lm.tolist()
    (ffhq / "landmarks.json").write_text(json.dumps(lm_ffhq))
    pairs = root / "pairs"
    g = torch.Generator().manual_seed(spec.seed + 104729)  # its own stream: the same pairs whatever the
    held_out = [sample_identity(g) for _ in range(spec.eval_identities)]  # training set's size
    labels = {}
    for p in range(spec.eval_pairs):
        s_id = p % len(held_out)
        t_id = (s_id + 1 + int(torch.randint(len(held_out) - 1, (), generator=g))) % len(held_out)
        s_attr, t_attr = sample_attributes(g), sample_attributes(g)
        name = f"{p:04d}.png"
        _save(render_face(held_out[s_id], s_attr, r)[0], pairs / "source" / name)
        _save(render_face(held_out[t_id], t_attr, r)[0], pairs / "target" / name)
        _save(render_face(held_out[s_id], t_attr, r)[0], pairs / "ground_truth" / name)
        labels[name] = {
            "source_identity": s_id,
            "target_identity": t_id,
            "source_identity_params": held_out[s_id].vector(),
            "target_attributes": t_attr.vector(),
        }
    (pairs / "identities.json").write_text(json.dumps(labels, indent=1))
    if spec.judge_images:
        write_judge_faces(root / "judge", spec.judge_images, r, seed=spec.seed + 7919)
    if spec.recon_images:  # a stream of its own: the judge and the shape network share no identity
        write_judge_faces(root / "recon", spec.recon_images, r, seed=spec.seed + 6007)
    meta = {
        "identity_fields": list(IDENTITY_FIELDS),
        "attribute_fields": list(ATTRIBUTE_FIELDS),
        "spec": {f.name: getattr(spec, f.name) for f in fields(spec)},
        "generator": "repsuite.faceswap.synthetic",
    }
    (root / "synthetic.json").write_text(json.dumps(meta, indent=1))
    return root


def write_judge_faces(root: str | Path, count: int, resolution: int, seed: int) -> Path:
    """Faces of ``count`` fresh identities with random attributes and their parameters, for a judge.

    Writes ``root/images/<nnnnn>.png`` and ``root/params.json``::

        {"identity_fields": [...], "attribute_fields": [...],
         "images": {"images/00000.png": {"identity": [18 floats], "attributes": [8 floats]}, ...}}

    The stream is seeded separately from the swapper's training faces, so the judge shares no image (and,
    with probability one, no identity) with them.
    """
    root = Path(root)
    g = torch.Generator().manual_seed(seed)
    entries = {}
    for n in range(count):
        ident, attrs = sample_identity(g), sample_attributes(g)
        rel = f"images/{n:05d}.png"
        _save(render_face(ident, attrs, resolution)[0], root / rel)
        entries[rel] = {"identity": ident.vector(), "attributes": attrs.vector()}
    meta = {
        "identity_fields": list(IDENTITY_FIELDS),
        "attribute_fields": list(ATTRIBUTE_FIELDS),
        "images": entries,
    }
    (root / "params.json").write_text(json.dumps(meta))
    return root


def write_face_video(
    path: str | Path,
    seconds: float = 5.0,
    fps: int = 12,
    size: tuple[int, int] = (160, 96),
    face: int = 48,
    no_face_frames: int = 6,
    audio: bool = True,
    seed: int = 0,
) -> tuple[Path, list]:
    """A video of one synthetic face moving left to right, for face-swap demos, tests and benchmarks.

    The face is absent in the first ``no_face_frames`` frames; a 440 Hz tone plays as AAC audio. The
    video is lossless H.264 (yuv444p, qp 0), so frames read back as written.

    Returns:
        the path and each frame's true faces (:class:`~repsuite.faceswap.detection.Faces`, empty when the
        face is absent).
    """
    import av
    import numpy as np

    from repsuite.faceswap.align import warp_affine
    from repsuite.faceswap.detection import Faces

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    img, lm = render_face(sample_identity(g), sample_attributes(g), face)
    width, height = size
    frames = round(seconds * fps)
    truth = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        sound = container.add_stream("aac", rate=16000) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i in range(frames):
            canvas = torch.full((1, 3, height, width), 0.4)
            if i >= no_face_frames:
                x = 5 + (width - face - 10) * (i - no_face_frames) / max(1, frames - no_face_frames - 1)
                m = torch.tensor([[1.0, 0.0, x], [0.0, 1.0, (height - face) / 2]])
                square = warp_affine(torch.ones(1, 1, face, face), m[None], (height, width))
                canvas = canvas * (1 - square) + warp_affine(img[None], m[None], (height, width)) * square
                pts = lm + m[:, 2]
                box = torch.cat([m[:, 2], m[:, 2] + face])
                truth.append(Faces(box[None], torch.ones(1), pts[None]))
            else:
                truth.append(Faces(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2)))
            rgb = (canvas[0] * 255).round().byte().permute(1, 2, 0).numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = av.AudioFrame.from_ndarray(
                    tone[None, start : start + 1024], format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path, truth
