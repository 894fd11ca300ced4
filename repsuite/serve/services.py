"""What the web page does, without the web page: checked inputs in, answers and files out.

:class:`NLQService` answers questions on a catalogue clip or an uploaded video; :class:`FaceService` swaps
uploaded photos or a short video. Both only read files under the upload folders they are given (a path in a
request is never trusted) and only write into their output folder. Bad input raises :class:`ServeError`
with a message written for the page.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repsuite.errors import InputError
from repsuite.serve.catalogue import NLQCatalogue
from repsuite.serve.timeline import timeline_svg, window_iou

__all__ = [
    "MAX_IMAGE_PIXELS",
    "FaceService",
    "NLQAnswerView",
    "NLQService",
    "ServeError",
    "UploadGuard",
    "check_image",
    "cut_video",
    "parse_faces",
]

#: Largest image accepted (pixels); larger ones are refused before they are decoded.
MAX_IMAGE_PIXELS = 40_000_000
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


class ServeError(InputError):
    """Input the page refuses, with a message for the user."""


class UploadGuard:
    """Accepts only existing files inside the upload folders (resolved, so ``..`` and links cannot escape)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]

    def check(self, path: str | Path | None, what: str) -> Path:
        """The uploaded file ``path`` refers to.

        Raises:
            ServeError: nothing given, a path outside the upload folders, or a file that no longer exists.
        """
        if not path:
            raise ServeError(f"{what}: nothing was uploaded")
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(r) for r in self.roots):
            raise ServeError(f"{what}: not an uploaded file (only files uploaded to this page are read)")
        if not resolved.is_file():
            raise ServeError(f"{what}: the upload is no longer there; upload it again")
        return resolved


def check_image(path: Path, what: str) -> Path:
    """Refuse a file that is not a PNG / JPEG / WebP / BMP image, or one over :data:`MAX_IMAGE_PIXELS`.

    Reads only the header, so a decompression bomb is refused before it is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
    except (UnidentifiedImageError, OSError):
        raise ServeError(f"{what}: not an image (expected PNG, JPEG, WebP or BMP)") from None
    if fmt not in _IMAGE_FORMATS:
        raise ServeError(f"{what}: {fmt} images are not accepted (expected PNG, JPEG, WebP or BMP)")
    if w * h > MAX_IMAGE_PIXELS:
        raise ServeError(
            f"{what}: too large ({w} x {h} = {w * h / 1e6:.0f} megapixels; at most "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f})"
        )
    return path


def parse_faces(text: str | None) -> str | list[int]:
    """The page's face choice: ``largest`` (default), ``all``, or indices such as ``0, 2`` (left to right)."""
    text = (text or "largest").strip().lower()
    if text in ("largest", "all"):
        return text
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ServeError(
            f"faces {text!r}: expected 'largest', 'all', or face numbers such as '0, 2' (counted left to "
            "right from 0)"
        ) from None


def cut_video(src: Path, start: float, end: float, out: Path, max_seconds: float = 120.0) -> Path:
    """Re-encode ``[start, end]`` seconds of a video (at most ``max_seconds``) as H.264 MP4 at ``out``."""
    import av

    end = min(end, start + max_seconds)
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        vin = inp.streams.video[0]
        vout = dst.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or 30)
        vout.width, vout.height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
        vout.pix_fmt = "yuv420p"
        if start > 0 and vin.time_base:
            inp.seek(int(start / vin.time_base), stream=vin, backward=True)
        for frame in inp.decode(vin):
            t = frame.time
            if t is None or t < start:
                continue
            if t > end:
                break
            frame = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
            frame.pts = None
            dst.mux(vout.encode(frame))
        dst.mux(vout.encode(None))
    return out


def _video_seconds(path: Path, what: str) -> float:
    """The video's length (the extraction pipeline's probe); an unreadable file is answered for the page."""
    from repsuite.nlq.extract.video import VideoError, probe_video

    try:
        return probe_video(path).duration
    except VideoError as err:
        raise ServeError(
            f"{what}: not a video this page can read (MP4, WebM, MOV, AVI or MKV): {err}"
        ) from None


@dataclass
class NLQAnswerView:
    """One answered question as the page shows it."""

    rows: list[list[Any]]  # rank, start, end, score, IoU with the ground truth ("" without one)
    timeline: str  # SVG
    clip: Path | None  # the best window, cut from the clip's video when there is one
    note: str


class NLQService:
    """Questions on a catalogue clip or an uploaded video, answered by an :class:`NLQPredictor`."""

    def __init__(self, predictor: Any, catalogue: NLQCatalogue, outputs: Path, guard: UploadGuard) -> None:
        self.predictor, self.catalogue, self.outputs, self.guard = predictor, catalogue, outputs, guard
        #: why uploaded videos are not offered (None: they are)
        self.upload_refused = predictor.video_file_support()

    def ask(
        self, clip: str | None, question: str, top_k: int = 5, upload: str | None = None
    ) -> NLQAnswerView:
        """Rank windows answering ``question`` on the chosen clip, or on ``upload`` when given."""
        question = (question or "").strip()
        if not question:
            raise ServeError("question: type a question about the clip")
        if len(question) > 500:
            raise ServeError(f"question: {len(question)} characters; at most 500")
        top_k = int(min(max(int(top_k or 5), 1), 20))
        truth, video = None, None
        if upload:
            if self.upload_refused:
                raise ServeError(f"video upload: this model cannot encode videos ({self.upload_refused})")
            video = self.guard.check(upload, "video")
            duration = _video_seconds(video, "video")
            answer = self.predictor.query(video, question, top_k=top_k)
            where = f"uploaded video {video.name}"
        else:
            if not clip:
                raise ServeError("clip: choose a clip first")
            entry = self.catalogue.get(clip)
            answer = self.predictor.query(entry.feature_rows(), question, top_k=top_k)
            duration, truth, video, where = (
                entry.duration,
                entry.ground_truth(question),
                entry.video,
                entry.clip_uid,
            )
        windows = [(m.start, m.end, m.score) for m in answer.moments]
        rows = [
            [
                i + 1,
                round(s, 2),
                round(e, 2),
                round(sc, 4),
                round(window_iou((s, e), truth), 3) if truth else "",
            ]
            for i, (s, e, sc) in enumerate(windows)
        ]
        cut = None
        if video is not None and windows:
            cut = cut_video(
                video, windows[0][0], windows[0][1], self.outputs / f"answer-{uuid.uuid4().hex}.mp4"
            )
        note = f"{len(windows)} windows on {where} ({duration:.0f} s)"
        if truth:
            note += f"; ground truth {truth[0]:.1f}-{truth[1]:.1f} s"
        return NLQAnswerView(rows, timeline_svg(duration, windows, truth), cut, note)


class FaceService:
    """Swaps uploaded photos (or a short video) with a :class:`FaceSwapper`."""

    def __init__(
        self, swapper: Any, outputs: Path, guard: UploadGuard, max_video_seconds: float = 20.0
    ) -> None:
        self.swapper, self.outputs, self.guard = swapper, outputs, guard
        self.max_video_seconds = max_video_seconds

    def swap_image(self, source: str | None, target: str | None, faces: str | None) -> tuple[Path, dict]:
        """The swapped target saved as PNG (provenance in its text chunks), and the provenance record."""
        src = check_image(self.guard.check(source, "source photo"), "source photo")
        tgt = check_image(self.guard.check(target, "target photo"), "target photo")
        result = self.swapper.swap(str(src), str(tgt), faces=parse_faces(faces))
        out = result.save(self.outputs / f"swap-{uuid.uuid4().hex}.png")
        return out, dict(result.provenance)

    def swap_video(self, source: str | None, video: str | None, faces: str | None) -> tuple[Path, dict]:
        """The swapped video (H.264, audio kept, visible label) and its report."""
        src = check_image(self.guard.check(source, "source photo"), "source photo")
        clip = self.guard.check(video, "target video")
        seconds = _video_seconds(clip, "target video")
        if seconds > self.max_video_seconds:
            raise ServeError(
                f"target video: {seconds:.0f} s long; this page swaps at most {self.max_video_seconds:.0f} s "
                "(use `repsuite faceswap swap` for longer videos)"
            )
        out = self.outputs / f"swap-{uuid.uuid4().hex}.mp4"
        report = self.swapper.swap_video(str(src), str(clip), str(out), faces=parse_faces(faces))
        return out, {k: v for k, v in vars(report).items() if isinstance(v, (int, float, str))}
