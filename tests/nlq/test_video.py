"""Raw video → sampled frames: official row counts, the frame each row uses, rotation, broken files.

Every test writes real (tiny, lossless H.264) video files whose frames show their own index.
"""

import math

import numpy as np
import pytest
import torch

from repsuite.nlq.extract.video import (
    VideoError,
    decode_rows,
    frames_30fps,
    probe_video,
    row_frame_indices,
)
from repsuite.nlq.features import official_num_rows
from tests.helpers.videos import frame_image, read_index, write_video


@pytest.mark.parametrize(
    "num_frames, fps",
    [(32, 30), (48, 30), (50, 30), (97, 30), (160, 30), (50, 24), (77, 24), (100, 60), (131, 60)],
)
def test_row_count_is_the_official_formula(tmp_path, num_frames, fps):
    info = probe_video(write_video(tmp_path / "v.mp4", num_frames, fps))
    f30 = frames_30fps(info)
    assert f30 == math.floor(num_frames * 30 / fps + 1e-6)  # duration · 30; the frame count at 30 fps
    indices = row_frame_indices(f30)
    assert len(indices) == official_num_rows(f30) > 0
    if (f30 - 32) % 16:  # back-padded last window ends at the last frame
        assert indices[-1] == f30 - 32 + 16


def test_row_windows_and_sampling_rules():
    assert row_frame_indices(64) == [16, 32, 48]
    assert row_frame_indices(70) == [16, 32, 48, 54]  # last window [38, 70)
    assert row_frame_indices(31) == []
    a = row_frame_indices(200, "random", seed=3, key="vid-a")
    assert a == row_frame_indices(200, "random", seed=3, key="vid-a")  # same video, same draw
    assert a != row_frame_indices(200, "random", seed=3, key="vid-b")
    starts = [16 * i for i in range(len(a))]
    starts[-1] = min(starts[-1], 200 - 32)
    assert all(s <= f < s + 32 for s, f in zip(starts, a, strict=True))
    with pytest.raises(ValueError, match="sampling must be one of"):
        row_frame_indices(64, "middle")


@pytest.mark.parametrize("fps", [30, 24, 60])
@pytest.mark.parametrize("sampling", ["center", "random"])
def test_each_row_decodes_the_frame_on_screen_at_its_instant(tmp_path, fps, sampling):
    info = probe_video(write_video(tmp_path / "v.mp4", int(4.5 * fps), fps))
    indices = row_frame_indices(frames_30fps(info), sampling, seed=1, key="v")
    got = []
    for first, chunk in decode_rows(info, indices, short_side=None, chunk=3):
        assert first == len(got) and chunk.dtype == torch.uint8 and chunk.shape[1:] == (3, 32, 60)
        got += [read_index(f.permute(1, 2, 0).numpy()) for f in chunk]
    # sampled by time: 30 fps frame f is shown at f / 30 s, i.e. source frame floor(f · fps / 30)
    assert got == [math.floor(f * fps / 30 + 1e-9) for f in indices]


def test_display_rotation_is_applied(tmp_path):
    info = probe_video(write_video(tmp_path / "r.mp4", 40, 30, rotation=90))
    assert info.rotation == 90
    (_, chunk), *_ = list(decode_rows(info, [16], short_side=None))
    frame = chunk[0].permute(1, 2, 0).numpy()  # (60, 32, 3): portrait
    expected = np.rot90(frame_image(16), 1)  # counter-clockwise, the display-matrix convention
    assert frame.shape == expected.shape
    assert np.abs(frame.astype(int) - expected.astype(int)).max() < 8
    assert read_index(np.rot90(frame, -1)) == 16


def test_resize_on_decode_keeps_aspect(tmp_path):
    info = probe_video(write_video(tmp_path / "v.mp4", 40, 30))
    (_, chunk), *_ = list(decode_rows(info, [16], short_side=16))
    assert chunk.shape == (1, 3, 16, 30)


def test_broken_videos_raise_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 2000)
    for path in (empty, junk, tmp_path / "absent.mp4"):
        with pytest.raises(VideoError, match=path.name):
            probe_video(path)
    good = write_video(tmp_path / "good.mp4", 120, 30)
    truncated = tmp_path / "truncated.mp4"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=r"truncated\.mp4"):
        info = probe_video(truncated)
        list(decode_rows(info, row_frame_indices(frames_30fps(info))))
