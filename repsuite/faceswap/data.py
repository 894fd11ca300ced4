"""Face-swap datasets (no Lightning): VGGFace2-HQ identity folders, FFHQ flat folders, evaluation pairs.

* VGGFace2-HQ: ``ROOT/<identity>/<image>.jpg`` — one folder per identity (``n000001`` …), several images;
* FFHQ: ``ROOT/**/<number>.png`` (``images1024x1024/00000/00000.png`` …), no identities;
* either may hold ``landmarks.json``: ``{relative path: [[x, y] × 5]}`` (left eye, right eye, nose, mouth
  corners, in that image's pixels), used for the component discriminators' boxes;
* evaluation pairs: ``ROOT/source/<name>``, ``ROOT/target/<name>``, optional ``ROOT/ground_truth/<name>``
  and ``ROOT/identities.json`` (``{name: {"source_identity": i, "target_identity": j,
  "target_attributes": [...], ...}}``; the attributes are the renderer's truth on synthetic faces);
* judge faces (synthetic only): ``ROOT/params.json`` (``{"identity_fields": [...], "attribute_fields":
  [...], "images": {relative path: {"identity": [...], "attributes": [...]}}}``), see
  :func:`repsuite.faceswap.synthetic.write_judge_faces`.

Images are aligned square RGB faces, resized to ``resolution`` and returned in [-1, 1]. Unreadable,
non-RGB or non-square files are found when the index is built (:func:`check_images`), counted and logged
with their paths, and left out; a file that still fails while training is logged, counted and replaced by
another sample, so an epoch never stops on a bad image.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from repsuite.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FaceImage",
    "FaceImageError",
    "FacePairDataset",
    "JudgeFaceDataset",
    "PairFolderDataset",
    "check_images",
    "read_face",
    "scan_ffhq",
    "scan_vggface2",
]

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class FaceImageError(InputError):
    """An image that cannot be used as an aligned RGB face; the message names the file."""


@dataclass
class FaceImage:
    """One aligned face on disk."""

    path: Path
    identity: int  # index of the identity folder, -1 for FFHQ (unknown identity)
    landmarks: Tensor | None = None  # (5, 2) in the file's own pixels


def _landmark_file(root: Path) -> dict[str, Tensor]:
    path = root / "landmarks.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    out = {}
    for rel, pts in data.items():
        t = torch.tensor(pts, dtype=torch.float32)
        if t.shape != (5, 2):
            raise FaceImageError(f"{path}: entry {rel!r} must be 5 [x, y] points, got shape {tuple(t.shape)}")
        out[rel] = t
    return out


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def scan_vggface2(root: str | Path, identity_offset: int = 0) -> list[FaceImage]:
    """Faces of a VGGFace2-HQ-style folder; identities numbered in sorted folder order from the offset."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: VGGFace2-HQ folder not found (expected one sub-folder per identity)"
        )
    marks = _landmark_file(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FaceImageError(
            f"{root}: no identity folders (VGGFace2-HQ layout is ROOT/<identity>/<image>.jpg)"
        )
    out = []
    for k, folder in enumerate(folders):
        for p in _images(folder):
            out.append(FaceImage(p, identity_offset + k, marks.get(p.relative_to(root).as_posix())))
    return out


def scan_ffhq(root: str | Path) -> list[FaceImage]:
    """Faces of an FFHQ-style folder (any depth), identity unknown (-1)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: FFHQ folder not found")
    marks = _landmark_file(root)
    return [FaceImage(p, -1, marks.get(p.relative_to(root).as_posix())) for p in _images(root)]


def read_face(path: str | Path, resolution: int) -> tuple[Tensor, float]:
    """An aligned face as (3, resolution, resolution) in [-1, 1], and the resize factor applied.

    Raises:
        FaceImageError: unreadable file, not RGB (e.g. greyscale, RGBA, CMYK), or not square.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                raise FaceImageError(f"{path}: expected an RGB image, got mode {im.mode!r}")
            w, h = im.size
            if w != h:
                raise FaceImageError(f"{path}: expected a square aligned face, got {w}x{h}")
            if w != resolution:
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            arr = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    except FaceImageError:
        raise
    except Exception as err:  # PIL.UnidentifiedImageError, OSError on truncated files, ...
        raise FaceImageError(f"{path}: cannot be read as an image ({err})") from err
    img = arr.permute(2, 0, 1).float() / 127.5 - 1  # (3, R, R)
    return img, resolution / w


def check_images(images: list[FaceImage]) -> tuple[list[FaceImage], Counter]:
    """Drop unreadable / non-RGB / non-square files (headers only, no full decode); log and count them."""
    from PIL import Image

    keep, bad = [], Counter()
    for face in images:
        try:
            with Image.open(face.path) as im:
                im.verify()
                mode, (w, h) = im.mode, im.size
            reason = None if mode == "RGB" and w == h else ("not RGB" if mode != "RGB" else "not square")
        except Exception:
            reason = "unreadable"
        if reason:
            bad[reason] += 1
            log.warning("skipping %s: %s", face.path, reason)
        else:
            keep.append(face)
    return keep, bad


class FacePairDataset(Dataset):
    """(source, target) training pairs.

    With probability ``same_identity_ratio`` the source is another image of the target's identity (the
    reconstruction loss applies); an FFHQ image or a single-image identity pairs with itself (the data module
    augments the source differently). Otherwise the source is a random face of another identity.

    Args:
        images: the faces (VGGFace2-HQ and/or FFHQ).
        resolution: output size.
        same_identity_ratio: fraction of same-identity pairs (SimSwap alternates, i.e. 0.5).
    """

    def __init__(self, images: list[FaceImage], resolution: int, same_identity_ratio: float = 0.5) -> None:
        if not images:
            raise FaceImageError("FacePairDataset: no usable images")
        self.images, self.resolution, self.ratio = images, resolution, same_identity_ratio
        self.by_identity: dict[int, list[int]] = {}
        for i, f in enumerate(images):
            if f.identity >= 0:
                self.by_identity.setdefault(f.identity, []).append(i)
        self.failures: Counter = Counter()  # per process (each DataLoader worker counts its own)

    def __len__(self) -> int:
        return len(self.images)

    def _partner(self, i: int, same: bool) -> int:
        face = self.images[i]
        if same:
            others = [j for j in self.by_identity.get(face.identity, []) if j != i]
            return others[int(torch.randint(len(others), ()))] if others else i
        for _ in range(16):
            j = int(torch.randint(len(self.images), ()))
            if j != i and (face.identity < 0 or self.images[j].identity != face.identity):
                return j
        return (i + 1) % len(self.images)

    def _load(self, i: int) -> tuple[Tensor, Tensor]:
        face = self.images[i]
        img, scale = read_face(face.path, self.resolution)
        lm = face.landmarks * scale if face.landmarks is not None else torch.full((5, 2), float("nan"))
        return img, lm

    def __getitem__(self, index: int) -> dict:
        for _ in range(8):
            same = bool(torch.rand(()) < self.ratio)
            j = self._partner(index, same)
            try:
                target, lm = self._load(index)
                source, _ = self._load(j)
            except FaceImageError as err:
                self.failures["unreadable at load time"] += 1
                log.warning(
                    "%s (sample replaced; %d so far in this process)", err, sum(self.failures.values())
                )
                index = int(torch.randint(len(self.images), ()))
                continue
            t, s = self.images[index], self.images[j]
            return {
                "source": source,
                "target": target,
                "same_identity": same or (t.identity >= 0 and t.identity == s.identity),
                "same_image": j == index,
                "target_landmarks": lm,
                "source_identity": s.identity,
                "target_identity": t.identity,
            }
        raise FaceImageError("FacePairDataset: 8 bad images in a row; check the data folders")


class PairFolderDataset(Dataset):
    """Evaluation pairs ``source/<name>`` × ``target/<name>`` (+ ``ground_truth/<name>``, identities.json).

    Args:
        root: the pair folder.
        resolution: output size.
    """

    def __init__(self, root: str | Path, resolution: int) -> None:
        self.root, self.resolution = Path(root), resolution
        src, tgt = self.root / "source", self.root / "target"
        if not src.is_dir() or not tgt.is_dir():
            raise FileNotFoundError(
                f"{self.root}: expected source/ and target/ folders with matching file names"
            )
        names_s = {p.name for p in _images(src)}
        names_t = {p.name for p in _images(tgt)}
        self.names = sorted(names_s & names_t)
        if not self.names:
            raise FaceImageError(f"{self.root}: no file name is in both source/ and target/")
        self.unmatched = len(names_s ^ names_t)
        if self.unmatched:
            log.warning(
                "%s: %d files without a partner in source/ or target/ are ignored", self.root, self.unmatched
            )
        ids = self.root / "identities.json"
        self.labels = json.loads(ids.read_text()) if ids.exists() else {}
        self.has_ground_truth = (self.root / "ground_truth").is_dir()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        item = {
            "name": name,
            "source": read_face(self.root / "source" / name, self.resolution)[0],
            "target": read_face(self.root / "target" / name, self.resolution)[0],
            "source_identity": int(self.labels.get(name, {}).get("source_identity", -1)),
            "target_identity": int(self.labels.get(name, {}).get("target_identity", -1)),
        }
        attrs = self.labels.get(name, {}).get("target_attributes")
        if attrs is not None:
            item["target_attributes"] = torch.tensor(attrs, dtype=torch.float32)
        if self.has_ground_truth:
            item["ground_truth"] = read_face(self.root / "ground_truth" / name, self.resolution)[0]
        return item


class JudgeFaceDataset(Dataset):
    """Faces with the renderer's parameters (``params.json``), for training the synthetic judge.

    Args:
        root: folder with ``params.json`` and the images it lists.
        resolution: output size.
        names: the relative paths to use (default: all, sorted).
        meta: ``params.json`` as :func:`read_judge_params` returned it (read from ``root`` when None).

    Raises:
        FaceImageError: ``params.json`` missing or malformed; the message names the file and the field.
    """

    def __init__(
        self, root: str | Path, resolution: int, names: list[str] | None = None, meta: dict | None = None
    ) -> None:
        self.root, self.resolution = Path(root), resolution
        meta = meta if meta is not None else read_judge_params(self.root)
        self.identity_fields, self.attribute_fields = meta["identity_fields"], meta["attribute_fields"]
        self.entries = meta["images"]
        self.names = sorted(self.entries) if names is None else list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        entry = self.entries[name]
        return {
            "image": read_face(self.root / name, self.resolution)[0],
            "identity": torch.tensor(entry["identity"], dtype=torch.float32),
            "attributes": torch.tensor(entry["attributes"], dtype=torch.float32),
        }


def read_judge_params(root: str | Path) -> dict:
    """``root/params.json`` checked: field lists, and every image's vectors of matching lengths."""
    path = Path(root) / "params.json"
    if not path.is_file():
        raise FaceImageError(
            f"{path}: not found; `repsuite faceswap synth ROOT` writes faces with their parameters in "
            "ROOT/judge/ and ROOT/recon/"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FaceImageError(f"{path}: not valid JSON ({err})") from err
    for key in ("identity_fields", "attribute_fields", "images"):
        if key not in meta:
            raise FaceImageError(
                f"{path}: missing field {key!r} (expected identity_fields, attribute_fields, images)"
            )
    sizes = {"identity": len(meta["identity_fields"]), "attributes": len(meta["attribute_fields"])}
    for name, entry in meta["images"].items():
        for key, size in sizes.items():
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, list) or len(value) != size:
                raise FaceImageError(
                    f"{path}: images[{name!r}].{key} must be a list of {size} numbers, got {value!r}"
                )
    if not meta["images"]:
        raise FaceImageError(f"{path}: 'images' is empty")
    return meta
