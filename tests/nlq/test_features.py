import math

import pytest
import torch

from repsuite.nlq.features import (
    ROWS_PER_SEC,
    FeatureError,
    FeatureSource,
    clip_row_range,
    concat_sources,
    official_num_rows,
    pool_to_length,
)


@pytest.mark.parametrize(
    ("frames", "rows"),
    [(31, 0), (32, 1), (47, 2), (48, 2), (49, 3), (64, 3), (65, 4), (30 * 480, 899), (30 * 480 + 5, 900)],
)
def test_official_row_count(frames, rows):
    # rows start every 16 frames; a trailing partial stride adds one back-padded window
    assert official_num_rows(frames) == rows


def test_official_row_count_matches_window_enumeration():
    for frames in range(32, 600):
        starts = list(range(0, frames - 32 + 1, 16))
        if starts[-1] + 32 < frames:
            starts.append(frames - 32)  # back-padded last window ends at the last frame
        assert official_num_rows(frames) == len(starts), frames


def test_rows_per_second():
    assert ROWS_PER_SEC == 1.875


@pytest.mark.parametrize(
    ("start", "end", "n", "expected"),
    [
        (0.0, 480.0, 2000, (0, 901)),  # rows 0..900 inclusive start within [0, 480] s
        (-4e-7, 10.0, 2000, (0, 19)),  # tiny negative start (occurs in v1/v2) maps to row 0
        (100.0, 580.0, 2000, (187, 1088)),
        (100.0, 580.0, 1000, (187, 1000)),  # clamped to the rows that exist
    ],
)
def test_clip_row_range(start, end, n, expected):
    assert clip_row_range(start, end, n) == expected
    assert expected[0] == max(0, math.floor(start * 1.875))


def test_clip_row_range_beyond_video_is_an_error():
    with pytest.raises(FeatureError, match="maps to no feature row"):
        clip_row_range(1000.0, 1010.0, 100)


def test_source_slices_per_video_and_reads_per_clip(tmp_path):
    root = tmp_path / "slowfast8x8_r101_k400"
    root.mkdir()
    video = torch.arange(2000, dtype=torch.float32)[:, None].repeat(1, 4)  # row i holds value i
    torch.save(video, root / "vid0.pt")
    torch.save(torch.ones(7, 4), root / "clipX.pt")
    src = FeatureSource("slowfast8x8_r101_k400", root)
    assert src.dim == 4
    rows = src.clip_features("clip0", "vid0", 100.0, 580.0)
    assert rows.shape == (901, 4) and rows[0, 0] == 187 and rows[-1, 0] == 1087
    assert src.clip_features("clipX", "vid0", 100.0, 580.0).shape == (7, 4)  # per-clip file wins


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (torch.zeros(5), "expected a 2-d"),
        (torch.zeros(5, 4, dtype=torch.long), "floating-point"),
        ({"feats": torch.zeros(5, 4)}, "expected a tensor, got dict"),
    ],
)
def test_bad_feature_files_name_the_file(tmp_path, payload, match):
    torch.save(payload, tmp_path / "vid0.pt")
    src = FeatureSource("x", tmp_path)
    with pytest.raises(FeatureError, match=rf"vid0.pt: .*{match}"):
        src.clip_features("c", "vid0", 0.0, 1.0)


def test_missing_and_corrupt_files(tmp_path):
    src = FeatureSource("x", tmp_path)
    with pytest.raises(FeatureError, match=r"neither c\.pt .* nor vid0\.pt"):
        src.clip_features("c", "vid0", 0.0, 1.0)
    (tmp_path / "vid0.pt").write_bytes(b"not a torch file")
    with pytest.raises(FeatureError, match="cannot be read"):
        src.clip_features("c", "vid0", 0.0, 1.0)
    with pytest.raises(FeatureError, match="does not exist"):
        FeatureSource("y", tmp_path / "nope")


def test_concat_normalises_and_checks_rows():
    a, b = torch.randn(10, 3) * 5, torch.randn(11, 2) * 7
    out = concat_sources([("a", a), ("b", b)])
    assert out.shape == (10, 5)
    torch.testing.assert_close(out[:, :3].norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(out[:, 3:].norm(dim=-1), torch.ones(10))
    with pytest.raises(FeatureError, match=r"disagree on the number of rows \{'a': 10, 'b': 12\}"):
        concat_sources([("a", a), ("b", torch.randn(12, 2))], where="clip c0")


def test_pool_to_length():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    assert pool_to_length(x, 20) is x
    pooled = pool_to_length(x, 4)  # edges round(0, 2.5, 5, 7.5, 10) = 0, 2, 5, 8, 10 (banker's rounding)
    assert pooled.squeeze(1).tolist() == [0.5, 3.0, 6.0, 8.5]
    big = torch.randn(6750, 8)
    p = pool_to_length(big, 600)
    assert p.shape == (600, 8)
    torch.testing.assert_close(p.mean(0), big.mean(0), atol=1e-2, rtol=0)
