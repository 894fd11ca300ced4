"""Pre-extracted video features in the official Ego4D layout, sliced to NLQ clips.

Official files (EGO4D/docs features.md; facebookresearch/Ego4d ego4d/features/extract_features.py):
one ``<video_uid>.pt`` per canonical 30 fps video, a (N, D) tensor whose row i is computed from frames
[16·i, 16·i + 32) — window 32, stride 16, so 30 / 16 = 1.875 rows per second — plus one back-padded row
when (F − 32) is not a multiple of 16 (the last window is moved back to end at the last frame).

Index math used here (the official VSLNet preparation, EGO4D/episodic-memory
NLQ/VSLNet/utils/prepare_ego4d_dataset.py, does the same with ``int()`` truncation):

* row i *starts* at i / 1.875 s of the video;
* a clip [video_start_sec, video_end_sec] takes rows ``floor(start · 1.875)`` … ``floor(end · 1.875)``
  inclusive, clamped to the rows that exist (a start of −4e-7 s, which occurs, maps to row 0);
* inside a clip of n rows, row j is taken to cover [j · d / n, (j + 1) · d / n) seconds with
  d = n / 1.875, the quantised clip duration VSLNet also uses (so labels and predicted seconds agree with
  the baseline's conversion).

Also accepted: per-clip files ``<clip_uid>.pt`` (EgoVLP, CLIP and other third-party releases), used as is.
Several sources are L2-normalised per row and concatenated, as in the thesis (§2.4.1).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from repsuite.errors import InputError

__all__ = [
    "FEATURE_FPS",
    "ROWS_PER_SEC",
    "STRIDE_FRAMES",
    "WINDOW_FRAMES",
    "FeatureError",
    "FeatureSource",
    "clip_row_range",
    "concat_sources",
    "load_feature_file",
    "official_num_rows",
    "pool_to_length",
    "save_feature_file",
]

FEATURE_FPS = 30.0
WINDOW_FRAMES = 32
STRIDE_FRAMES = 16
ROWS_PER_SEC = FEATURE_FPS / STRIDE_FRAMES  # 1.875


class FeatureError(InputError):
    """A feature file that is missing or malformed; the message names the file."""


def official_num_rows(num_frames: int, window: int = WINDOW_FRAMES, stride: int = STRIDE_FRAMES) -> int:
    """Rows the official extractor writes for ``num_frames`` frames (0 if shorter than one window)."""
    if num_frames < window:
        return 0
    full, rest = divmod(num_frames - window, stride)
    return full + 1 + (1 if rest else 0)


#: Rows a feature file may fall short of its clip's end (~2 s): the official extractor's last 32-frame window
#: ends up to 2 rows before a video's last frame, and annotated clip ends overshoot the video by rounding.
SHORT_FILE_TOLERANCE = 4


def clip_row_range(video_start_sec: float, video_end_sec: float, num_rows: int) -> tuple[int, int]:
    """Python slice bounds (start, stop) of a clip's rows in its video's feature tensor."""
    start = max(0, math.floor(video_start_sec * ROWS_PER_SEC))
    last = min(num_rows - 1, math.floor(video_end_sec * ROWS_PER_SEC))
    if last < start:
        raise FeatureError(
            f"clip [{video_start_sec}, {video_end_sec}] s maps to no feature row of a video with "
            f"{num_rows} rows"
        )
    return start, last + 1


def load_feature_file(path: Path, what: str = "feature") -> Tensor:
    """Memory-map a (rows, dim) float tensor file; errors name the file and say what was expected.

    ``what`` names the kind of file in messages ("feature", "text feature").
    """
    try:
        t = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FeatureError(f"{path}: {what} file not found") from None
    except Exception as err:  # corrupt or not a torch file
        raise FeatureError(f"{path}: cannot be read as a torch tensor file ({err})") from err
    if not isinstance(t, Tensor):
        raise FeatureError(f"{path}: expected a tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise FeatureError(f"{path}: expected a 2-d (rows, dim) tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise FeatureError(f"{path}: expected floating-point features, got {t.dtype}")
    return t


def save_feature_file(obj: object, path: Path) -> None:
    """``torch.save`` under a temporary name, then rename it to ``path``.

    A final name never holds a half-written file, so an interrupted build resumes from the files it finished.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class FeatureSource:
    """One folder of features: ``<video_uid>.pt`` per video (sliced by clip times) or ``<clip_uid>.pt``.

    Args:
        name: the source's name (the folder name, e.g. ``slowfast8x8_r101_k400``).
        root: the folder.
    """

    name: str
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._rows: dict[Path, int] = {}
        if not self.root.is_dir():
            raise FeatureError(f"{self.root}: feature folder for source '{self.name}' does not exist")
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Feature width D, read from the first file in the folder."""
        if self._dim is None:
            first = next(iter(sorted(self.root.glob("*.pt"))), None)
            if first is None:
                raise FeatureError(f"{self.root}: no .pt feature files for source '{self.name}'")
            self._dim = int(load_feature_file(first).shape[1])
        return self._dim

    def path_for(self, clip_uid: str, video_uid: str) -> tuple[Path, bool]:
        """The file holding a clip's rows and whether it is a per-clip file.

        Raises:
            FeatureError: when neither ``<clip_uid>.pt`` nor ``<video_uid>.pt`` exists.
        """
        clip_file = self.root / f"{clip_uid}.pt"
        if clip_file.exists():
            return clip_file, True
        video_file = self.root / f"{video_uid}.pt"
        if not video_file.exists():
            raise FeatureError(
                f"{self.root}: neither {clip_uid}.pt (per clip) nor {video_uid}.pt (per video) exists for "
                f"clip {clip_uid} (source '{self.name}')"
            )
        return video_file, False

    def clip_num_rows(
        self, clip_uid: str, video_uid: str, video_start_sec: float, video_end_sec: float
    ) -> int:
        """How many rows the clip gets from this source, reading only the file header (memory map).

        Raises:
            FeatureError: missing or malformed file, a width other than the source's, a clip outside the
                video's rows, or a file that ends before the clip does (a truncated extraction: the end of
                the clip, and any answer there, would silently be missing).
        """
        path, per_clip = self.path_for(clip_uid, video_uid)
        if path not in self._rows:
            t = load_feature_file(path)
            if t.shape[1] != self.dim:
                raise FeatureError(
                    f"{path}: rows are {t.shape[1]}-d but source '{self.name}' is {self.dim}-d (read from "
                    "its first file); every file of a source must have the same width"
                )
            self._rows[path] = int(t.shape[0])
        n = self._rows[path]
        end = video_end_sec - (video_start_sec if per_clip else 0.0)  # where the clip ends in the file
        if n - 1 < math.floor(end * ROWS_PER_SEC) - SHORT_FILE_TOLERANCE:
            raise FeatureError(
                f"{path}: its {n} rows cover {n / ROWS_PER_SEC:.2f} s but clip {clip_uid} needs "
                f"{end:.2f} s of this {'clip' if per_clip else 'video'}; the feature file is shorter than "
                "the clip (a truncated extraction?)"
            )
        if per_clip:
            return n
        start, stop = clip_row_range(video_start_sec, video_end_sec, n)
        return stop - start

    def clip_features(
        self, clip_uid: str, video_uid: str, video_start_sec: float, video_end_sec: float
    ) -> Tensor:
        """(n, D) float32 rows of one clip."""
        path, per_clip = self.path_for(clip_uid, video_uid)
        t = load_feature_file(path)
        if self._dim is not None and t.shape[1] != self._dim:
            raise FeatureError(f"{path}: dim {t.shape[1]} differs from the source's {self._dim}")
        start = 0
        if not per_clip:
            start, stop = clip_row_range(video_start_sec, video_end_sec, t.shape[0])
            t = t[start:stop]
        t = t.float().clone()  # (n, D), detached from the memory map
        finite = torch.isfinite(t).all(dim=1)  # (n,)
        if not finite.all():
            bad = int((~finite).nonzero()[0]) + start
            raise FeatureError(
                f"{path}: row {bad} holds NaN or infinite values ({int((~finite).sum())} bad row(s) in clip "
                f"{clip_uid}); re-extract the features (a NaN row would make the loss NaN)"
            )
        return t


def concat_sources(parts: list[tuple[str, Tensor]], where: str = "") -> Tensor:
    """L2-normalise each source per row and concatenate along the feature axis.

    Row counts may differ by one (rounding of clip ends differs between extractors); the longer parts are
    cut to the shortest. A larger difference means the sources are not aligned and is an error naming them.
    """
    lengths = {name: t.shape[0] for name, t in parts}
    if max(lengths.values()) - min(lengths.values()) > 1:
        raise FeatureError(
            f"{where}: feature sources disagree on the number of rows {lengths}; they must describe the same "
            "windows (row counts may differ by at most one)"
        )
    n = min(lengths.values())
    return torch.cat([torch.nn.functional.normalize(t[:n], dim=-1) for _, t in parts], dim=-1)  # (n, ΣD)


def pool_to_length(x: Tensor, max_len: int) -> Tensor:
    """Mean-pool (n, D) rows into exactly ``max_len`` bins when n > max_len (VSLNet's rule), else return x.

    Bin i averages rows [round(i·n/max_len), round((i+1)·n/max_len)), never empty.
    """
    n = x.shape[0]
    if n <= max_len:
        return x
    edges = torch.round(torch.arange(max_len + 1, dtype=torch.float64) * n / max_len).long()  # (max_len + 1,)
    starts, ends = edges[:-1], torch.maximum(edges[1:], edges[:-1] + 1)
    csum = torch.cat([x.new_zeros(1, x.shape[1]), x.cumsum(dim=0)])  # (n + 1, D)
    return (csum[ends] - csum[starts]) / (ends - starts).unsqueeze(1).to(x.dtype)  # (max_len, D)
