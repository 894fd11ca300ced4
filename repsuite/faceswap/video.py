"""Swapping faces through a video: streamed decode and encode (PyAV), smoothed landmarks, audio kept.

Frames are decoded one packet at a time, faces detected every ``detect_every`` frames (in between, and on
detection frames, each tracked face's landmarks are smoothed so the swap does not jitter), swapped in
batches of ``batch_size`` frames by one generator call and encoded to H.264; the audio packets are copied
as they are. A frame without a face, or one whose swap fails, is written unchanged and counted, so one bad
frame never costs the rest of the video. The output carries its provenance in the container metadata and,
unless asked otherwise, a visible label in a corner; it is written to a temporary name and moved into place
at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from repsuite.faceswap.detection import Faces

__all__ = ["LABEL", "VIDEO_SUFFIXES", "LandmarkSmoother", "VideoSwapReport", "draw_label", "swap_video"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
LABEL = "AI-generated (repsuite)"
STAGES = ("decode", "detect", "swap", "paste", "encode")


@dataclass
class VideoSwapReport:
    """What happened to a video: frame counts and where the time went (seconds per stage)."""

    output: Path
    frames: int = 0
    swapped: int = 0
    no_face: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall: float = 0.0

    @property
    def fps(self) -> float:
        """Frames per second over the whole run."""
        return self.frames / self.wall if self.wall else 0.0

    def lines(self) -> list[str]:
        """A human summary: counts, frames/s and the share of each stage."""
        total = sum(self.seconds.values()) or 1.0
        shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in self.seconds.items())
        out = [
            f"{self.output}: {self.frames} frames, {self.swapped} swapped, {self.no_face} without a face "
            f"(unchanged), {self.failed} failed (unchanged); {self.fps:.2f} frames/s",
            f"time: {shares}",
        ]
        return out + [f"  failed: {f}" for f in self.failures[:5]]


class LandmarkSmoother:
    """Exponential smoothing of each tracked face's landmarks from frame to frame.

    Faces are matched to the previous frame's by nearest box centre (within ``max_jump`` of the box size);
    a matched face's landmarks become ``alpha · new + (1 − alpha) · previous``; new faces start fresh.

    Args:
        alpha: weight of the newest landmarks (1 = no smoothing).
        max_jump: largest centre move, as a fraction of the box's longer side, still treated as the same face.
    """

    def __init__(self, alpha: float = 0.5, max_jump: float = 0.5) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha, self.max_jump = alpha, max_jump
        self.previous: Faces | None = None

    def __call__(self, faces: Faces) -> Faces:
        """Smoothed copy of ``faces`` (same order), remembered for the next frame."""
        marks = faces.landmarks.clone()
        prev = self.previous
        if prev is not None and len(prev) and len(faces):
            centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2  # (N, 2)
            before = (prev.boxes[:, :2] + prev.boxes[:, 2:]) / 2  # (M, 2)
            dist = torch.cdist(centres, before)  # (N, M)
            side = (faces.boxes[:, 2:] - faces.boxes[:, :2]).max(dim=1).values  # (N,)
            used: set[int] = set()
            for i in dist.min(dim=1).values.argsort().tolist():  # closest pairs first
                j = int(dist[i].argmin())
                if j not in used and dist[i, j] <= self.max_jump * side[i]:
                    marks[i] = self.alpha * faces.landmarks[i] + (1 - self.alpha) * prev.landmarks[j]
                    used.add(j)
        self.previous = Faces(faces.boxes, faces.scores, marks)
        return self.previous


def draw_label(frame: Tensor, text: str = LABEL) -> Tensor:
    """A copy of a uint8 (3, H, W) frame with ``text`` in white on a dark box in the bottom-right corner."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(frame.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, img.height // 30))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pad = 3
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    left, top = max(0, img.width - w - pad), max(0, img.height - h - pad)
    draw.rectangle([left, top, left + w, top + h], fill=(0, 0, 0))
    draw.text((left + pad - x0, top + pad - y0), text, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _frame_tensor(frame: Any) -> Tensor:
    return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)  # (3, H, W) uint8


class _Progress:
    """Frames and frames/s on stderr (a tqdm bar on a terminal, a line per 10% otherwise)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.total, self.enabled, self.last = total, enabled, -1
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, unit="frame", desc="swap")

    def update(self, done: int, fps: float) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif self.enabled and self.total and (tenth := 10 * done // self.total) > self.last:
            self.last = tenth
            print(f"swap: {done}/{self.total} frames, {fps:.2f} frames/s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class VideoOptions:
    """How :func:`swap_video` treats a video (see its arguments)."""

    faces: Any = "largest"
    detect_every: int = 1
    smoothing: float = 0.5
    label: bool = True
    batch_size: int = 8
    colour_match: bool = True
    progress: bool = True


def swap_video(
    swapper: Any,
    source: Any,
    target: str | os.PathLike,
    output: str | os.PathLike,
    faces: Any = "largest",
    detect_every: int = 1,
    smoothing: float = 0.5,
    label: bool = True,
    batch_size: int = 8,
    colour_match: bool = True,
    progress: bool = True,
) -> VideoSwapReport:
    """Swap the identity of ``source`` onto the chosen faces of every frame of the video ``target``.

    Args:
        swapper: a :class:`~repsuite.faceswap.swapper.FaceSwapper` with a detector.
        source: an image or an :class:`~repsuite.faceswap.swapper.Identity`.
        target: the video file.
        output: the video to write (``.mp4``, ``.mov`` or ``.mkv``; H.264, audio copied).
        faces: ``"largest"``, ``"all"`` or indices counted left to right, chosen on every frame.
        detect_every: run the detector on every N-th frame; the frames between reuse its faces.
        smoothing: landmark smoothing weight of the newest frame (1 turns smoothing off).
        label: draw a visible "AI-generated" label in a corner (recorded in the metadata either way).
        batch_size: frames swapped per generator call.
        colour_match: match swapped faces' colours to the target faces.
        progress: report frames and frames/s on stderr.

    Raises:
        SwapError: unreadable video or a source without a face (nothing is written).
    """
    import av

    from repsuite.faceswap.swapper import SwapError

    opts = VideoOptions(faces, max(1, detect_every), smoothing, label, batch_size, colour_match, progress)
    target, output = Path(target), Path(output)
    swapper.require_detector()  # up front: else every frame would fail, one by one
    if output.suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise SwapError(f"{output}: write .mp4, .mov or .mkv")
    ident = swapper.identity(source)
    report = VideoSwapReport(output)
    record = swapper.provenance | {"source": Path(ident.source).name, "target": target.name,
                                   "label": "visible" if label else "none (--no-label)"}  # fmt: skip
    try:
        inp = av.open(str(target))
    except Exception as err:
        raise SwapError(f"{target}: cannot be opened as a video ({err})") from err
    if not inp.streams.video:
        inp.close()
        raise SwapError(f"{target}: has no video stream")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.part{output.suffix}")
    start = time.perf_counter()
    try:
        _VideoRun(swapper, ident, opts, report).run(inp, tmp, record)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        inp.close()
    os.replace(tmp, output)
    report.wall = time.perf_counter() - start
    return report


class _VideoRun:
    """The decode → detect → swap → paste → encode loop of :func:`swap_video`."""

    def __init__(self, swapper: Any, ident: Any, opts: VideoOptions, report: VideoSwapReport) -> None:
        self.swapper, self.ident, self.opts, self.report = swapper, ident, opts, report
        self.clock = report.seconds
        self.smoother = LandmarkSmoother(opts.smoothing)
        self.pending: list[tuple[Any, Tensor, Faces | None]] = []  # (frame, pixels, faces or None = failed)
        self.last: Faces | None = None
        self.seen = 0

    def run(self, inp: Any, tmp: Path, record: dict[str, str]) -> None:
        import av

        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        bar = _Progress(vin.frames or 0, self.opts.progress)
        began = time.perf_counter()
        with av.open(str(tmp), "w") as out:
            vout = out.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or 30)
            vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
            vout.pix_fmt = "yuv420p" if vout.width % 2 == 0 and vout.height % 2 == 0 else "yuv444p"
            vout.options = {"crf": "18", "preset": "veryfast"}
            aout = out.add_stream_from_template(ain) if ain is not None else None
            out.metadata["comment"] = json.dumps(record)
            out.metadata["description"] = "synthetic: faces swapped by repsuite"
            self.out, self.vout = out, vout
            t0 = time.perf_counter()
            for packet in inp.demux(*(s for s in (vin, ain) if s is not None)):
                if packet.stream is ain:
                    if packet.dts is not None:  # copied as it is
                        packet.stream = aout
                        out.mux(packet)
                    t0 = time.perf_counter()
                    continue
                for frame in packet.decode():
                    pixels = _frame_tensor(frame)
                    self.clock["decode"] += time.perf_counter() - t0
                    self.pending.append((frame, pixels, self._faces(pixels)))
                    if len(self.pending) == self.opts.batch_size:
                        self._flush()
                        bar.update(self.report.frames, self.report.frames / (time.perf_counter() - began))
                    t0 = time.perf_counter()
            self._flush()
            t0 = time.perf_counter()
            for p in vout.encode():
                out.mux(p)
            self.clock["encode"] += time.perf_counter() - t0
        bar.close()

    def _faces(self, pixels: Tensor) -> Faces | None:
        """This frame's chosen faces (detected every ``detect_every`` frames, else the last ones).

        None when detection failed: the frame passes through unchanged and is counted.
        """
        index, self.seen = self.seen, self.seen + 1
        if index % self.opts.detect_every and self.last is not None:
            return self.last
        t0 = time.perf_counter()
        try:
            found = self.swapper.find_faces(pixels)  # left to right, as for photos
        except Exception as err:
            self.report.failures.append(f"frame {index}: detection failed ({err})")
            self.last = None
            return None
        finally:
            self.clock["detect"] += time.perf_counter() - t0
        try:
            chosen = self.swapper._choose(found, self.opts.faces, f"frame {index}") if len(found) else found
        except Exception:  # fewer faces than the indices asked for: none swapped on this frame
            chosen = found.select([])
        if len(chosen) == 0:
            self.smoother.previous = None
        self.last = self.smoother(chosen) if len(chosen) else chosen
        return self.last

    def _swap(self, frames: list[Tensor], faces: list[Faces]) -> list[Tensor | None]:
        """Swapped frames; a batch that fails is retried frame by frame, failing frames give None."""
        sw, o = self.swapper, self.opts
        try:
            return sw.swap_frames(self.ident, frames, faces, o.colour_match, timings=self.clock)
        except Exception:
            out: list[Tensor | None] = []
            for i, (pix, f) in enumerate(zip(frames, faces, strict=True)):
                try:
                    out.append(sw.swap_frames(self.ident, [pix], [f], o.colour_match, timings=self.clock)[0])
                except Exception as err:
                    out.append(None)
                    self.report.failures.append(f"frame {self.report.frames + i}: swap failed ({err})")
            return out

    def _flush(self) -> None:
        """Swap, paste and encode the pending frames; failed frames are written unchanged (counted)."""
        import av

        if not self.pending:
            return
        ok = [i for i, p in enumerate(self.pending) if p[2] is not None]
        swapped = self._swap([self.pending[i][1] for i in ok], [self.pending[i][2] for i in ok])
        results: dict[int, Tensor | None] = dict(zip(ok, swapped, strict=True))
        r = self.report
        for i, (frame, pixels, faces) in enumerate(self.pending):
            img = results.get(i)
            r.frames += 1
            if img is None:
                r.failed += 1
                img = pixels
            elif len(faces) == 0:
                r.no_face += 1
            else:
                r.swapped += 1
            t0 = time.perf_counter()
            img = draw_label(img) if self.opts.label else img
            new = av.VideoFrame.from_ndarray(img.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            for p in self.vout.encode(new):
                self.out.mux(p)
            self.clock["encode"] += time.perf_counter() - t0
        self.pending.clear()
