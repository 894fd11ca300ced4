import pytest
import torch

from repsuite.nlq.annotations import load_nlq_annotations
from repsuite.nlq.data import Ego4DNLQDataset, bins_to_seconds, collate_nlq, seconds_to_bins
from repsuite.nlq.features import FeatureError, FeatureSource
from tests.conftest import ROOT

DATA = ROOT / "tests/data/ego4d_nlq/v2"
SOURCES = ("slowfast8x8_r101_k400", "clip_vitb16")


def _dataset(split="val", **kw):
    ann = load_nlq_annotations(DATA / f"annotations/nlq_{split}.json")
    sources = [FeatureSource(n, DATA / n) for n in SOURCES]
    return Ego4DNLQDataset(ann, sources, **kw)


@pytest.mark.parametrize(
    ("window", "duration", "bins", "expected"),
    [
        ((10.0, 14.0), 100.0, 100, (10, 13)),
        ((10.0, 14.5), 100.0, 100, (10, 14)),
        ((0.0, 100.0), 100.0, 50, (0, 49)),
        ((30.0, 30.0), 100.0, 100, (30, 30)),  # zero-length window keeps one bin
        ((99.9, 120.0), 100.0, 10, (9, 9)),  # GT past the end clamps
    ],
)
def test_seconds_to_bins(window, duration, bins, expected):
    assert seconds_to_bins(*window, duration, bins) == expected


def test_bins_round_trip_covers_the_gt():
    start, end = seconds_to_bins(10.3, 14.2, 100.0, 64)
    sec = bins_to_seconds(torch.tensor(start), torch.tensor(end), torch.tensor(100.0), torch.tensor(64.0))
    assert sec[0] <= 10.3 and sec[1] >= 14.2 and sec[1] - sec[0] < 14.2 - 10.3 + 2 * 100 / 64


def test_samples_tokens_mode():
    ds = _dataset()
    assert len(ds) == 4 and ds.video_dim == 16 + 8
    s = ds[0]
    assert s.video.ndim == 2 and s.video.shape[1] == 24
    assert s.text.dtype == torch.long and s.text[0] == 49406 and s.text[-1] == 49407  # SOT ... EOT
    assert 0 <= s.start <= s.end < s.video.shape[0]
    q = ds.queries[0]
    assert s.gt_seconds == (q.gt_start, q.gt_end) and s.key == q.key
    # each source is L2-normalised per row before concatenation
    torch.testing.assert_close(s.video[:, :16].norm(dim=1), torch.ones(s.video.shape[0]))


def test_features_mode_pooling_and_positions():
    ds = _dataset(
        text_mode="features", text_dir=DATA / "clip_text_vitb16", max_video_len=20, temporal_position=True
    )
    s = ds[1]
    assert s.video.shape == (20, 26) and s.text.ndim == 2 and s.text.shape[1] == 8
    torch.testing.assert_close(s.video[:, -2], torch.arange(20) / 20)
    assert s.end < 20


def test_labels_point_at_the_signal():
    """GT bins hold the clip's strongest rows for the queried object (index math end to end)."""
    ds = _dataset(split="train")
    inside, outside = [], []
    for i in range(len(ds)):
        s = ds[i]
        x = s.video
        proto = x[s.start : s.end + 1].mean(0)
        score = x @ proto
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[s.start : s.end + 1] = True
        inside.append(score[mask].mean())
        outside.append(score[~mask].mean())
    assert torch.stack(inside).mean() > torch.stack(outside).mean() + 0.3


def test_collate_pads_and_masks():
    ds = _dataset(split="train")
    batch = collate_nlq([ds[i] for i in range(3)])
    b, lv, d = batch["video"].shape
    assert b == 3 and d == 24 and batch["video_padding_mask"].shape == (3, lv)
    for i in range(3):
        n = ds[i].video.shape[0]
        assert batch["num_bins"][i] == n
        assert not batch["video_padding_mask"][i, :n].any() and batch["video_padding_mask"][i, n:].all()
    assert batch["text"].dtype == torch.long and batch["text_padding_mask"].shape == batch["text"].shape
    assert batch["keys"][0] == ds.queries[0].key and batch["gt_seconds"].dtype == torch.float64


def test_missing_text_feature_file_names_the_file(tmp_path):
    ds = _dataset(text_mode="features", text_dir=tmp_path)
    with pytest.raises(FeatureError, match=r"_0\.pt: text feature file not found"):
        ds[0]


def test_row_count_mismatch_between_sources_is_an_error(tmp_path):
    ann = load_nlq_annotations(DATA / "annotations/nlq_val.json")
    clip = ann.clips[ann.queries[0].clip_uid]
    (tmp_path / "short").mkdir()
    torch.save(torch.randn(3, 4), tmp_path / "short" / f"{clip.clip_uid}.pt")  # a 3-row per-clip file
    ds = Ego4DNLQDataset(
        ann, [FeatureSource(SOURCES[0], DATA / SOURCES[0]), FeatureSource("short", tmp_path / "short")]
    )
    with pytest.raises(FeatureError, match=f"clip {clip.clip_uid} .* disagree on the number of rows"):
        ds[0]
