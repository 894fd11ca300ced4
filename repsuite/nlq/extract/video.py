"""Raw video → one sampled frame per official feature row, streamed with PyAV (no Lightning, no models).

The official Ego4D features (:mod:`repsuite.nlq.features`) have one row per window of 32 frames at 30 fps,
stride 16, plus a back-padded last window; CLIP frame features that are concatenated with them must have
exactly the same rows. This module decides, for every row, which instant of the video to encode, and
decodes exactly those frames:

* the video's length in 30 fps frames is ``F = floor(duration · 30)`` (the frame count itself for a 30 fps
  source), so ``N = official_num_rows(F)``;
* row i's window starts at 30 fps frame ``a_i = 16 i``, except the back-padded last row whose window is
  ``[F − 32, F)``;
* ``sampling="center"`` picks frame ``a_i + 16`` (the middle of the 32-frame window); ``"random"`` picks
  ``a_i + r`` with r uniform in [0, 32) from a generator seeded by ``(seed, video_uid)`` (the thesis drew
  one random frame per window), so every process draws the same frames for the same video;
* the chosen 30 fps frame f is shown at ``t = t_0 + f / 30`` seconds (t_0 = the first frame's time), and
  the source frame used is the one on screen at that instant: the last decoded frame whose timestamp is
  ≤ t. Sources that are not 30 fps are therefore sampled by time, not by frame index, and variable frame
  rates are handled the same way;
* the display-matrix rotation (phone footage) is applied, so frames are upright.

Frames are decoded sequentially and only the chosen ones are kept (resized on decode by swscale to the
encoder's short side), so memory is O(frames per batch), never the whole video.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from repsuite.errors import InputError
from repsuite.nlq.features import FEATURE_FPS, STRIDE_FRAMES, WINDOW_FRAMES, official_num_rows

__all__ = [
    "SAMPLING_RULES",
    "VideoError",
    "VideoInfo",
    "decode_rows",
    "frames_30fps",
    "probe_video",
    "row_frame_indices",
]

SAMPLING_RULES = ("center", "random")


class VideoError(InputError):
    """A video that cannot be used (unreadable, truncated, empty, shorter than one window); names the file."""


def _require_av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "reading videos needs PyAV: pip install 'repsuite[video]' (or pip install av)"
        ) from err
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What sampling needs to know about a video file."""

    path: str
    duration: float  # seconds, first frame start to last frame end
    start_time: float  # t_0, timestamp of the first frame
    fps: float  # average rate (informational; sampling is by time)
    width: int
    height: int
    rotation: int  # degrees counter-clockwise the frame is rotated for display (multiple of 90)


def frames_30fps(info: VideoInfo) -> int:
    """Length of the video in 30 fps frames, ``floor(duration · 30)`` (the frame count at 30 fps)."""
    return math.floor(info.duration * FEATURE_FPS + 1e-6)


def probe_video(path: str | Path) -> VideoInfo:
    """Duration, start time, rate, size and rotation of the first video stream of ``path``.

    The duration comes from the stream's own metadata when it has it (MP4, MKV with frame counts) and
    otherwise from a demux-only scan of the packets; the first frame is decoded for its display rotation.

    Raises:
        VideoError: unreadable file, no video stream, or no frames.
    """
    av = _require_av()
    path = str(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            tb = stream.time_base
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
            if stream.frames and stream.duration:
                duration = float(stream.duration * tb)
            else:  # no usable metadata: find the end of the last packet without decoding
                end = None
                for packet in container.demux(stream):
                    if packet.pts is None:
                        continue
                    t = float((packet.pts + (packet.duration or 0)) * tb)
                    end = t if end is None else max(end, t)
                duration = (end - start) if end is not None else 0.0
            width, height = stream.codec_context.width, stream.codec_context.height
            container.seek(0)
            first = next(iter(container.decode(stream)), None)  # also proves the stream decodes
            if first is None:
                raise VideoError(f"{path}: the video has no decodable frames")
            rotation = round(float(first.rotation or 0) / 90.0) * 90 % 360
    except VideoError:
        raise
    except Exception as err:  # av.error.* (invalid data, not found, ...)
        raise VideoError(f"{path}: cannot be opened as a video ({err})") from err
    if duration <= 0:
        raise VideoError(f"{path}: the video has no frames (zero length)")
    return VideoInfo(path, duration, start, rate, width, height, rotation)


def row_frame_indices(num_frames: int, sampling: str = "center", seed: int = 0, key: str = "") -> list[int]:
    """The 30 fps frame index sampled for every official row of a ``num_frames``-frame video.

    Args:
        num_frames: length in 30 fps frames (:func:`frames_30fps`).
        sampling: ``"center"`` (frame a + 16 of the window [a, a + 32)) or ``"random"``.
        seed: with ``"random"``, combined with ``key`` (the video uid) to seed the draw.
        key: the video's identity, so each video's draw is independent of processing order.

    Returns:
        one index per row (``official_num_rows(num_frames)`` of them; empty if shorter than one window).
    """
    if sampling not in SAMPLING_RULES:
        raise ValueError(f"sampling must be one of {SAMPLING_RULES}, got {sampling!r}")
    n = official_num_rows(num_frames)
    starts = [STRIDE_FRAMES * i for i in range(n)]
    if n and starts[-1] + WINDOW_FRAMES > num_frames:  # the back-padded last window ends at the last frame
        starts[-1] = num_frames - WINDOW_FRAMES
    if sampling == "center":
        return [a + WINDOW_FRAMES // 2 for a in starts]
    rng = random.Random(f"{seed}:{key}")
    return [a + rng.randrange(WINDOW_FRAMES) for a in starts]


def _upright(rgb: Tensor, rotation: int) -> Tensor:
    """Rotate an (H, W, 3) frame counter-clockwise by ``rotation`` degrees (display matrix convention)."""
    k = (rotation // 90) % 4
    return torch.rot90(rgb, k, dims=(0, 1)) if k else rgb


def _resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


class _RowBuffer:
    """Decoded rows waiting to be yielded in row order, in chunks; instants are filled in time order.

    Args:
        times: the instant (seconds) of every row.
        chunk: rows per yielded chunk (the last may be shorter).
    """

    def __init__(self, times: list[float], chunk: int) -> None:
        self.times, self.chunk = times, chunk
        self.order = sorted(range(len(times)), key=lambda r: times[r])  # rows by instant
        self.pos = 0  # position in `order` of the next instant to fill
        self.ready: dict[int, Tensor] = {}  # decoded rows not yet yielded
        self.next_row = 0  # first row not yet yielded

    @property
    def done(self) -> bool:
        """Every instant has its frame."""
        return self.pos == len(self.order)

    @property
    def next_time(self) -> float:
        """The earliest instant still to fill."""
        return self.times[self.order[self.pos]]

    def fill_next(self, picked: Tensor) -> None:
        """Give ``picked`` to the next instant and every row that shares it."""
        t = self.next_time
        while not self.done and self.next_time == t:
            self.ready[self.order[self.pos]] = picked
            self.pos += 1

    def flush(self, final: bool = False) -> Iterator[tuple[int, Tensor]]:
        """Yield full chunks of consecutive rows from ``next_row`` (``final``: the rest too)."""
        while self.next_row in self.ready and (len(self.ready) >= self.chunk or final):
            n = 0
            while self.next_row + n in self.ready and n < self.chunk:
                n += 1
            if n < self.chunk and not final:
                return
            yield self.next_row, torch.stack([self.ready.pop(self.next_row + i) for i in range(n)])
            self.next_row += n


def _fill_tail(rows: _RowBuffer, info: VideoInfo, last: Any, width: int, height: int) -> None:
    """Fill instants after the last decoded frame (on screen for one more frame step; later: truncated)."""
    frame_step = 1.0 / info.fps if info.fps else 0.1
    last_time = last.time if last is not None else None
    while not rows.done:
        if last is None or rows.next_time > last_time + frame_step + 1e-3:
            end = info.start_time + info.duration
            raise VideoError(
                f"{info.path}: truncated or corrupt: frames end at {(last_time or 0.0):.3f} s but "
                f"the file claims {end:.3f} s"
            )
        rows.fill_next(_to_tensor(last, width, height))


def decode_rows(
    info: VideoInfo, frame_indices: list[int], short_side: int | None = None, chunk: int = 64
) -> Iterator[tuple[int, Tensor]]:
    """Decode the frames shown at ``t_0 + f / 30`` for each 30 fps index f, yielded in row order, in chunks.

    Args:
        info: from :func:`probe_video`.
        frame_indices: one 30 fps frame index per row (:func:`row_frame_indices`). They need not be
            ascending (random picks in overlapping windows can step back); each frame is decoded once and
            only the rows not yet yielded are buffered.
        short_side: resize on decode so the shorter side has this many pixels (bicubic), or keep the size.
        chunk: rows per yielded chunk.

    Yields:
        (first row index, uint8 frames (n, 3, H, W)) upright, H and W fixed for the video.

    Raises:
        VideoError: decoding fails, or the stream ends before the last requested instant (truncated file).
    """
    av = _require_av()
    rows = _RowBuffer([info.start_time + f / FEATURE_FPS for f in frame_indices], chunk)
    width, height = _resized_size(info.width, info.height, short_side)
    last = None  # the most recently decoded frame (on screen until the next one)
    try:
        with av.open(info.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                while not rows.done and frame.time > rows.next_time + 1e-6:  # instants before this frame
                    rows.fill_next(_to_tensor(last if last is not None else frame, width, height))
                yield from rows.flush()
                last = frame
                if rows.done:
                    break
            _fill_tail(rows, info, last, width, height)
    except VideoError:
        raise
    except Exception as err:
        raise VideoError(f"{info.path}: decoding failed near row {rows.next_row} ({err})") from err
    yield from rows.flush(final=True)


def _to_tensor(frame, width: int, height: int) -> Tensor:
    """(3, H, W) uint8 upright RGB of a PyAV frame, resized to (width, height) by swscale (bicubic)."""
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
    t = _upright(torch.from_numpy(rgb), int(frame.rotation or 0))
    return t.permute(2, 0, 1).contiguous()  # (3, H, W)
