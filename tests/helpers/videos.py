"""Tiny real video files for tests: each frame shows its own index as black/white bars (PyAV encodes them)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

BITS, BAR, HEIGHT = 10, 6, 32  # 10 bars of 6 px: frames 0..1023, 60 x 32 pixels


def frame_image(index: int, width: int = BITS * BAR, height: int = HEIGHT) -> np.ndarray:
    """(H, W, 3) uint8 image whose bar b is white iff bit b of ``index`` is set; a grey marker top-left."""
    img = np.zeros((height, width, 3), np.uint8)
    for b in range(BITS):
        if (index >> b) & 1:
            img[:, b * BAR : (b + 1) * BAR] = 255
    img[:4, :4] = 128  # orientation marker (tells rotations apart)
    return img


def read_index(rgb: np.ndarray) -> int:
    """Frame index back from an upright (H, W, 3) frame of :func:`frame_image` (no resize)."""
    row = rgb[rgb.shape[0] // 2]
    return sum(int(row[b * BAR + BAR // 2, 0] > 127) << b for b in range(BITS))


def write_video(path: str | Path, num_frames: int, fps: float | Fraction = 30, rotation: int = 0) -> Path:
    """Encode ``num_frames`` numbered frames at ``fps`` (lossless H.264) with an optional display rotation."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = BITS * BAR, HEIGHT, "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_face_clip(path, seconds=5.0, fps=12, size=(160, 96), face=48, no_face_frames=6, audio=True, seed=0):
    """:func:`repsuite.faceswap.synthetic.write_face_video` with the tests' defaults."""
    from repsuite.faceswap.synthetic import write_face_video

    return write_face_video(path, seconds, fps, size, face, no_face_frames, audio, seed)
