import pytest
import torch

from repsuite.nlq.datamodule import Ego4DNLQDataModule
from repsuite.nlq.transforms import Compose, SlidingWindow, VideoSplicing
from tests.conftest import ROOT

DATA = str(ROOT / "tests/data/ego4d_nlq")


class _Donor:
    def __init__(self, n=50):
        self.rows = -torch.arange(n, dtype=torch.float32)[:, None] - 1000  # recognisable donor rows

    def random_clip_rows(self):
        return self.rows


def _rows(n=200):
    return torch.arange(n, dtype=torch.float32)[:, None]  # row i holds value i


@pytest.mark.parametrize("seed", range(30))
def test_sliding_window_keeps_gt_and_ratio(seed):
    torch.manual_seed(seed)
    rows = _rows()
    start, end = 120.4, 131.7
    out, s, e = SlidingWindow((0.4, 0.8))(rows, start, end)
    assert 80 <= out.shape[0] <= 160
    offset = int(out[0, 0])
    assert s == pytest.approx(start - offset) and e == pytest.approx(end - offset)
    assert 0 <= s and e <= out.shape[0]  # the GT is inside the window
    # the GT rows are the same rows as before
    assert torch.equal(out[int(s) : int(e) + 1], rows[int(start) : int(end) + 1])


def test_sliding_window_grows_for_long_gt():
    torch.manual_seed(0)
    out, s, e = SlidingWindow((0.4, 0.4))(_rows(100), 5.0, 95.0)
    assert out.shape[0] >= 90 and s >= 0 and e <= out.shape[0]


def test_video_splicing_inserts_clip():
    torch.manual_seed(1)
    rows = _rows(20)
    out, s, e = VideoSplicing(p=1.0)(rows, 3.0, 7.5, _Donor())
    assert out.shape[0] == 70
    cut = int(s - 3.0)
    assert 1 <= cut <= 48
    assert (
        torch.equal(out[cut : cut + 20], rows) and (out[:cut] < -999).all() and (out[cut + 20 :] < -999).all()
    )
    assert e == pytest.approx(7.5 + cut)
    same, s2, e2 = VideoSplicing(p=0.0)(rows, 3.0, 7.5, _Donor())
    assert same is rows and (s2, e2) == (3.0, 7.5)


def test_compose_sw_then_vs():
    torch.manual_seed(2)
    out, s, e = Compose([SlidingWindow(), VideoSplicing(1.0)])(_rows(100), 40.0, 45.0, _Donor(30))
    assert 40 + 30 <= out.shape[0] <= 80 + 30
    assert torch.equal(out[int(s) : int(e)], torch.arange(40, 45, dtype=torch.float32)[:, None])


def test_bad_settings():
    with pytest.raises(ValueError, match="ratio"):
        SlidingWindow((0.9, 0.4))
    with pytest.raises(ValueError, match="p must be in"):
        VideoSplicing(1.5)


def test_datamodule_applies_augmentations_to_training_only():
    dm = Ego4DNLQDataModule(
        DATA, features=["slowfast8x8_r101_k400"], sliding_window=True, video_splicing=True, splice_prob=1.0
    )
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert "SlidingWindow" in repr(train.transform) and val.transform is None
    torch.manual_seed(0)
    for i in range(len(train)):
        s = train[i]
        assert 0 <= s.start <= s.end < s.video.shape[0]
        n_raw = train.clip_rows(train.queries[i].clip_uid).shape[0]
        assert s.video.shape[0] > 0.4 * n_raw  # spliced into a donor: longer than the crop alone
