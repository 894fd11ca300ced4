"""``FaceSwapper``: a trained swapper on ordinary photos, in two lines.

    swapper = FaceSwapper.from_checkpoint("swapper.ckpt", detector="detection_Resnet50_Final.pth")
    swapper.swap("me.jpg", "group.jpg", faces="all").save("swapped.png")

Faces are found by a detector (RetinaFace from its published checkpoint, or any :data:`FaceDetector`),
aligned to the FFHQ template by their five landmarks, swapped at the model's resolution, colour-matched to
the target face and pasted back through a feathered face-shaped mask. Pixels outside every pasted mask are
the input's, bit for bit. Results carry provenance (PNG text chunks; EXIF and XMP for JPEG).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import ModelHubMixin
from torch import Tensor

from repsuite.checkpoints import PRETRAINED_WEIGHTS, file_sha256, read_pretrained, write_pretrained
from repsuite.errors import InputError
from repsuite.faceswap.align import estimate_similarity, face_template, warp_affine
from repsuite.faceswap.detection import (
    FaceDetector,
    Faces,
    RetinaFace,
    RetinaFaceConfig,
    RetinaFaceDetector,
    load_retinaface,
)
from repsuite.faceswap.model import to_channels_last

__all__ = ["FaceSwapper", "Identity", "SwapError", "SwapResult", "face_mask", "match_colour", "read_image"]

ImageInput = (
    str | os.PathLike | Tensor | Any
)  # a path, a (3, H, W) uint8 tensor, a PIL image or an (H, W, 3) array
FaceChoice = Literal["largest", "all"] | int | Sequence[int]
#: ``format`` of the config.json :meth:`FaceSwapper.save_pretrained` writes.
PRETRAINED_FORMAT = "repsuite-face-swapper/1"
#: what ``FaceSwapper(precision=...)`` accepts
PRECISIONS = (None, "32-true", "bf16-mixed")


class SwapError(InputError):
    """An input the swapper cannot use (no face, unreadable image, wrong checkpoint); names the file."""


def read_image(image: ImageInput, what: str = "image") -> tuple[Tensor, str]:
    """Any supported image → uint8 RGB (3, H, W) and a name for messages.

    Files are decoded by PIL, turned upright by their EXIF orientation and converted to RGB.

    Raises:
        SwapError: unreadable file or an array / tensor of another shape or type.
    """
    from PIL import Image, ImageOps

    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise SwapError(
                f"{what}: expected a uint8 (3, H, W) RGB tensor, got {image.dtype} {tuple(image.shape)}"
            )
        return image.cpu(), f"<{what} tensor>"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                pil = ImageOps.exif_transpose(im).convert("RGB")
        except FileNotFoundError:
            raise SwapError(f"{path}: {what} not found") from None
        except Exception as err:  # PIL.UnidentifiedImageError, truncated files
            raise SwapError(f"{path}: cannot be read as an image ({err})") from err
        name = str(path)
    elif isinstance(image, Image.Image):
        pil, name = image.convert("RGB"), f"<{what} PIL image>"
    else:
        import numpy as np

        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise SwapError(f"{what}: expected an (H, W, 3) uint8 RGB array, got {arr.dtype} {arr.shape}")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), f"<{what} array>"
    arr = torch.frombuffer(bytearray(pil.tobytes()), dtype=torch.uint8).view(pil.height, pil.width, 3)
    return arr.permute(2, 0, 1).contiguous(), name


def face_mask(size: int, feather: float = 0.12) -> Tensor:
    """A soft face-shaped mask (1, 1, size, size) over an FFHQ-aligned face: 1 inside, 0 outside.

    An ellipse from the brows to the chin and cheek to cheek (from the 512 px template), falling off
    linearly over ``feather`` of its radius, so the pasted face blends into the target's own hair and
    background and the mask is exactly 0 away from the face.
    """
    s = size / 512.0
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    r = (((xs - 256 * s) / (150 * s)) ** 2 + ((ys - 300 * s) / (190 * s)) ** 2).sqrt()
    return ((1 - r) / feather).clamp(0, 1)[None, None]


def match_colour(face: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """Shift and scale each channel of ``face`` so its masked mean and spread equal ``reference``'s.

    Args:
        face: (B, 3, S, S) swapped faces.
        reference: (B, 3, S, S) the aligned target faces.
        mask: (1 or B, 1, S, S) weights of the face region.
    """
    w = mask / mask.sum((-1, -2), keepdim=True).clamp(min=1e-6)

    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mean = (x * w).sum((-1, -2), keepdim=True)  # (B, 3, 1, 1)
        return mean, ((x - mean).pow(2) * w).sum((-1, -2), keepdim=True).clamp(min=1e-6).sqrt()

    fm, fs = stats(face)
    rm, rs = stats(reference)
    return (face - fm) / fs * rs + rm


@dataclass(frozen=True)
class Identity:
    """A source identity: its embedding (1, D) and where it came from. Reusable across many targets."""

    embedding: Tensor
    source: str
    box: list[float]


@dataclass
class SwapResult:
    """A swapped image (3, H, W) uint8, the target faces that were swapped, and its provenance record."""

    image: Tensor
    faces: Faces
    provenance: dict[str, str] = field(default_factory=dict)

    def to_pil(self) -> Any:
        """The image as a PIL image."""
        from PIL import Image

        return Image.fromarray(self.image.permute(1, 2, 0).numpy())

    def save(self, path: str | os.PathLike) -> Path:
        """Write PNG (provenance as text chunks) or JPEG (as EXIF description and XMP); atomic."""
        from PIL import Image, PngImagePlugin

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".png", ".jpg", ".jpeg"):
            raise SwapError(f"{path}: write .png or .jpg (both carry the provenance record)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        img = self.to_pil()
        if suffix == ".png":
            info = PngImagePlugin.PngInfo()
            for k, v in self.provenance.items():
                info.add_text(k, str(v))
            img.save(tmp, format="PNG", pnginfo=info)
        else:
            exif = Image.Exif()
            exif[0x010E] = json.dumps(self.provenance)  # ImageDescription
            exif[0x0131] = f"repsuite {self.provenance.get('repsuite', '')}"  # Software
            img.save(tmp, format="JPEG", quality=95, exif=exif, xmp=_xmp(self.provenance))
        os.replace(tmp, path)
        return path


def _xmp(record: dict[str, str]) -> bytes:
    """An XMP packet with the provenance as ``repsuite:*`` properties (readable by exiftool and friends)."""
    from xml.sax.saxutils import quoteattr

    props = " ".join(f"repsuite:{k.replace('-', '_')}={quoteattr(str(v))}" for k, v in record.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        f'xmlns:repsuite="https://github.com/repsuite/ns/1.0/" {props}/></rdf:RDF></x:xmpmeta>'
        '<?xpacket end="w"?>'
    ).encode()


class FaceSwapper(ModelHubMixin, library_name="repsuite", tags=["face-swapping", "synthetic-media"]):
    """A :class:`FaceSwapModule` with a face detector, for photos of any size with any number of faces.

    ``save_pretrained(DIR)`` / ``FaceSwapper.from_pretrained(DIR)`` share it in the Hugging Face hub layout
    (``config.json``, ``model.safetensors`` with the swapper and, when it is RetinaFace, the detector, a
    model card); ``from_pretrained`` reads a local directory only.

    Args:
        module: the restored swapper (eval mode).
        detector: a :data:`FaceDetector` (e.g. :func:`load_retinaface`); None allows only
            :meth:`swap_aligned`.
        device: where the swapper (and detector) run.
        checkpoint: the checkpoint file, recorded in the provenance.
        precision: ``None`` / ``"32-true"`` (float32), or ``"bf16-mixed"``: the generator under bf16 autocast
            with channels-last weights and activations (converted in place) — several times faster on
            CPUs with AMX and on GPUs with tensor cores; swaps differ from float32 by ~0.05 in [-1, 1].
        compile: run the generator with the source folded in (``FaceSwapGenerator.fixed_source``) through
            ``torch.compile`` with Inductor's freezing (the folded weights become constants, pre-packed
            for the convolution library) and channels-last tensors. For many targets of one source (a
            video, a folder): each new source and each new batch shape compiles first (about a minute
            on a 2-core CPU); after that a 256 / 512 px face runs ~1.5x faster than uncompiled float32
            (benchmarks/faceswap.py). Swaps equal the uncompiled ones up to float rounding. Meant for
            many targets of few sources: torch.compile keeps each source's compiled graph (its frozen
            weights included) for the life of the process, and once 8 graphs exist (sources × batch
            shapes; Dynamo's ``recompile_limit``) runs later ones uncompiled.
    """

    def __init__(
        self,
        module: Any,
        detector: FaceDetector | None = None,
        device: str | torch.device | None = None,
        checkpoint: str = "",
        precision: str | None = None,
        compile: bool = False,
    ) -> None:
        from repsuite._version import __version__

        if precision not in PRECISIONS:
            raise SwapError(f"precision {precision!r}: expected one of {', '.join(map(repr, PRECISIONS))}")
        self.precision = None if precision == "32-true" else precision
        self.compile = bool(compile)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        if self.precision or self.compile:
            to_channels_last(self.module.swap_generator())
        self.detector = detector.to(self.device) if isinstance(detector, torch.nn.Module) else detector
        self.size = int(module.hparams.resolution)
        self.mask = face_mask(self.size).to(self.device)
        # the generator with the last identity folded in (FaceSwapGenerator.fixed_source), reused while the
        # same Identity object is passed: a video or a folder then runs through plain convolutions.
        # (identity, the folded generator or its compiled form; both know the generator they fold)
        self._fixed: tuple[Identity, Any] | None = None
        self.provenance = {"repsuite": __version__, "synthetic": "true", "content": "face swap"}
        if checkpoint:
            self.provenance |= {
                "repsuite-checkpoint": Path(checkpoint).name,
                "repsuite-checkpoint-sha256": file_sha256(checkpoint),
            }

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | os.PathLike,
        *,
        detector: str | os.PathLike | FaceDetector | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        compile: bool = False,
    ) -> FaceSwapper:
        """Restore a :class:`FaceSwapModule` checkpoint (weights only) and a detector.

        ``detector`` is a RetinaFace checkpoint file (:func:`load_retinaface`) or any :data:`FaceDetector`;
        ``precision`` and ``compile`` as in the constructor.

        Raises:
            SwapError: the checkpoint is missing or not a face-swap checkpoint.
            CheckpointError: the detector file is not a RetinaFace checkpoint (names the keys).
        """
        from repsuite.faceswap.module import FaceSwapModule

        path = Path(ckpt)
        if not path.is_file():
            raise SwapError(f"{path}: checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise SwapError(f"{path}: cannot be read as a weights-only torch checkpoint ({err})") from err
        weights = state.get("state_dict") if isinstance(state, dict) else None
        if not isinstance(weights, dict) or not any(k.startswith("generator.") for k in weights):
            found = sorted(weights or state)[:5] if isinstance(state, dict) else type(state).__name__
            raise SwapError(
                f"{path}: not a FaceSwapModule checkpoint (expected `state_dict` with generator.* "
                f"weights; found {found})"
            )
        module = FaceSwapModule._from_state(state)
        if isinstance(detector, (str, os.PathLike)):
            detector = load_retinaface(detector)
        return cls(module, detector, device, str(path), precision, compile)

    # ------------------------------------------------------------------------------------------- sharing
    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json (swapper hyper-parameters and architecture, detector body) + all weights."""
        module = self.module
        detector = self.detector if isinstance(self.detector, RetinaFaceDetector) else None
        config = {
            "format": PRETRAINED_FORMAT,
            "module_hparams": {k: v for k, v in dict(module.hparams).items() if not k.startswith("_")},
            "architecture": module.architecture(),
            "detector": None if detector is None else {
                "body": detector.net.cfg.body, "threshold": detector.threshold, "nms_iou": detector.nms_iou,
                "max_size": detector.max_size,
            },
        }  # fmt: skip
        state = {f"swapper.{k}": v for k, v in module.state_dict().items()}
        if detector is not None:
            state |= {f"detector.{k}": v for k, v in detector.net.state_dict().items()}
        write_pretrained(save_directory, config, state)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        directory: str | os.PathLike,
        *,
        detector: str | os.PathLike | FaceDetector | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        compile: bool = False,
    ) -> FaceSwapper:
        """A swapper from a folder written by :meth:`save_pretrained` (local only: nothing is downloaded).

        ``detector`` replaces the saved one (or supplies one when none was saved); ``precision`` and
        ``compile`` as in the constructor.

        Raises:
            SwapError: not a directory, or not one a repsuite face swapper wrote.
        """
        path = Path(directory)
        if not path.is_dir():
            raise SwapError(f"{path}: not a directory (from_pretrained reads a save_pretrained folder)")
        return super().from_pretrained(
            path,
            local_files_only=True,
            detector=detector,
            device=device,
            precision=precision,
            compile=compile,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        config: dict | None = None,
        detector: Any = None,
        device: Any = None,
        precision: str | None = None,
        compile: bool = False,
        **_: Any,
    ) -> FaceSwapper:
        from repsuite.faceswap.module import ARCHITECTURE_KEY, FaceSwapModule

        path = Path(model_id)
        state = read_pretrained(path, config, PRETRAINED_FORMAT, "a face swapper", SwapError)
        part = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("swapper.")}
        module = FaceSwapModule._from_state(
            {"hyper_parameters": config["module_hparams"], ARCHITECTURE_KEY: config["architecture"],
             "state_dict": part}
        )  # fmt: skip
        saved = config.get("detector")
        if isinstance(detector, (str, os.PathLike)):
            detector = load_retinaface(detector)
        elif detector is None and saved:
            net = RetinaFace(RetinaFaceConfig(saved["body"]))
            net.load_state_dict(
                {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("detector.")}
            )
            args = {k: saved[k] for k in ("threshold", "nms_iou", "max_size")}
            detector = RetinaFaceDetector(net, **args)
        swapper = cls(module, detector, device, precision=precision, compile=compile)
        sha = file_sha256(path / PRETRAINED_WEIGHTS)
        swapper.provenance |= {"repsuite-checkpoint": path.name, "repsuite-checkpoint-sha256": sha}
        return swapper

    # ------------------------------------------------------------------------------------------- faces
    def detect(self, image: ImageInput) -> Faces:
        """The faces of one image, numbered left to right (the order ``faces=[...]`` indices refer to)."""
        pixels, name = read_image(image)
        return self._detect(pixels, name)

    def require_detector(self) -> None:
        """Refuse work that needs a face detector when this swapper has none."""
        if self.detector is None:
            raise SwapError(
                "no face detector: pass detector=PATH (a RetinaFace checkpoint) or a FaceDetector"
            )

    def find_faces(self, pixels: Tensor) -> Faces:
        """The detector's faces of one uint8 image (3, H, W), left to right (possibly none)."""
        self.require_detector()
        faces = self.detector(pixels[None].to(self.device))[0]
        return faces.select(faces.boxes[:, 0].argsort())

    def _detect(self, pixels: Tensor, name: str) -> Faces:
        faces = self.find_faces(pixels)
        if len(faces) == 0:
            raise SwapError(f"{name}: no face found")
        return faces

    def _choose(self, faces: Faces, choice: FaceChoice, name: str) -> Faces:
        if choice == "all":
            return faces
        if choice == "largest":
            return faces.select([int(faces.areas().argmax())])
        index = [choice] if isinstance(choice, int) else [] if isinstance(choice, str) else list(choice)
        if not index or not all(isinstance(i, int) for i in index):
            raise SwapError(f"faces={choice!r}: expected 'largest', 'all', an index or a list of indices")
        if any(not -len(faces) <= i < len(faces) for i in index):
            raise SwapError(
                f"{name}: faces {index} asked for, but {len(faces)} were found (0..{len(faces) - 1}, "
                "left to right)"
            )
        return faces.select([i % len(faces) for i in index])

    def _align(self, pixels: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
        """Photo (3, H, W) uint8 and landmarks (N, 5, 2) → aligned faces (N, 3, S, S) in [-1, 1], matrices."""
        photo = pixels[None].to(self.device).float() / 127.5 - 1  # (1, 3, H, W)
        m = estimate_similarity(
            landmarks.to(self.device), face_template(self.size).to(self.device)
        )  # (N, 2, 3)
        return warp_affine(photo.expand(len(landmarks), -1, -1, -1), m, (self.size, self.size)), m

    @torch.no_grad()
    def identity(self, source: ImageInput | Identity, face: Literal["largest"] | int = "largest") -> Identity:
        """The identity of one face of ``source`` (the largest by default): compute once, swap many."""
        if isinstance(source, Identity):
            return source
        pixels, name = read_image(source, "source")
        faces = self._choose(self._detect(pixels, name), face, name)
        aligned, _ = self._align(pixels, faces.landmarks)
        return Identity(self.module.identity_vector(aligned), name, faces.boxes[0].tolist())

    # ------------------------------------------------------------------------------------------- swap
    @torch.no_grad()
    def swap_aligned(self, identity: Identity, faces: Tensor) -> Tensor:
        """Aligned target faces (N, 3, S, S) in [-1, 1] → swapped faces, same shape.

        The identity is folded into the generator once per :class:`Identity` object and reused for every
        later call with it (the same swaps as the general path, see ``FaceSwapGenerator.fixed_source``).
        The fold is a snapshot of the weights: after changing them in place, make a new ``FaceSwapper``.
        """
        gen = self.module.swap_generator()
        if self._fixed is None or self._fixed[0] is not identity or self._fixed[1].generator is not gen:
            fixed = gen.fixed_source(identity.embedding.to(self.device))
            if self.precision:
                to_channels_last(fixed)
            self._fixed = (identity, fixed.compiled() if self.compile else fixed)
        faces = faces.to(self.device)
        if self.precision:
            faces = faces.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(self.precision)):
            out = self._fixed[1](faces, randomize_noise=False)
        return out.float().contiguous().clamp(-1, 1)

    @torch.no_grad()
    def swap(
        self,
        source: ImageInput | Identity,
        target: ImageInput,
        faces: FaceChoice = "largest",
        colour_match: bool = True,
    ) -> SwapResult:
        """Put the identity of ``source`` on the chosen faces of ``target``.

        Args:
            source: an image (its largest face gives the identity) or an :class:`Identity`.
            target: the image to change.
            faces: ``"largest"``, ``"all"``, or indices of the target's faces counted left to right.
            colour_match: match each swapped face's colour statistics to the target face's.

        Returns:
            the swapped image; pixels outside the pasted masks equal the target's exactly.
        """
        ident = self.identity(source)
        pixels, name = read_image(target, "target")
        chosen = self._choose(self._detect(pixels, name), faces, name)
        image = self.swap_frames(ident, [pixels], [chosen], colour_match)[0]
        boxes = [[round(v, 1) for v in b] for b in chosen.boxes.tolist()]
        record = self.provenance | {"source": Path(ident.source).name, "target": Path(name).name,
                                    "faces": json.dumps(boxes)}  # fmt: skip
        return SwapResult(image, chosen, record)

    @torch.no_grad()
    def swap_frames(
        self,
        identity: Identity,
        frames: Sequence[Tensor],
        faces: Sequence[Faces],
        colour_match: bool = True,
        timings: dict[str, float] | None = None,
    ) -> list[Tensor]:
        """Swap the given faces of several images in one generator batch; each (3, H, W) uint8 in and out.

        Images with no faces come back unchanged (the same tensor). ``timings`` accumulates the seconds
        spent aligning + swapping (``"swap"``) and pasting back (``"paste"``).
        """
        import time

        t0 = time.perf_counter()
        aligned, matrices, counts = [], [], []
        for pixels, f in zip(frames, faces, strict=True):
            counts.append(len(f))
            if len(f):
                a, m = self._align(pixels, f.landmarks)
                aligned.append(a)
                matrices.append(m)
        if not aligned:
            return list(frames)
        aligned_all = torch.cat(aligned)  # (ΣN, 3, S, S)
        swapped = self.swap_aligned(identity, aligned_all)
        if colour_match:
            swapped = match_colour(swapped, aligned_all, self.mask).clamp(-1, 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the timings below mean what they say
        t1 = time.perf_counter()
        out, first, k = [], 0, 0
        for pixels, n in zip(frames, counts, strict=True):
            if n == 0:
                out.append(pixels)
                continue
            out.append(self.paste(pixels, swapped[first : first + n], matrices[k]))
            first, k = first + n, k + 1
        if timings is not None:
            timings["swap"] = timings.get("swap", 0.0) + t1 - t0
            timings["paste"] = timings.get("paste", 0.0) + time.perf_counter() - t1
        return out

    def paste(self, pixels: Tensor, faces: Tensor, matrices: Tensor) -> Tensor:
        """Paste aligned faces (N, 3, S, S) in [-1, 1] into a photo (3, H, W) uint8 through :func:`face_mask`.

        Faces are pasted one after another (later ones over earlier ones where masks overlap); pixels whose
        mask is 0 for every face keep their input value exactly.
        """
        import kornia

        h, w = pixels.shape[-2:]
        out = pixels.to(self.device).float()[None]  # (1, 3, H, W) in [0, 255]
        touched = torch.zeros(1, 1, h, w, dtype=torch.bool, device=self.device)
        for face, m in zip(faces, matrices, strict=True):
            back = kornia.geometry.transform.invert_affine_transform(m[None])  # aligned → photo
            colour = warp_affine((face[None] + 1) * 127.5, back, (h, w))  # (1, 3, H, W)
            alpha = warp_affine(self.mask, back, (h, w)).clamp(0, 1)  # (1, 1, H, W)
            out = out * (1 - alpha) + colour * alpha
            touched |= alpha > 0
        result = out.round().clamp(0, 255).to(torch.uint8)[0]
        return torch.where(touched[0], result, pixels.to(self.device)).cpu()

    def swap_video(self, source: ImageInput | Identity, target: str | os.PathLike, output: str | os.PathLike,
                   **options: Any) -> Any:  # fmt: skip
        """Swap through a video file; see :func:`repsuite.faceswap.video.swap_video` for the options.

        Returns:
            a :class:`~repsuite.faceswap.video.VideoSwapReport` (frame counts, frames/s, time per stage).
        """
        from repsuite.faceswap.video import swap_video

        return swap_video(self, source, target, output, **options)
