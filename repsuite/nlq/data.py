"""Ego4D NLQ dataset (no Lightning): one sample per language query, video rows + question + labels.

Times and indices (see :mod:`repsuite.nlq.features` for how clip rows are cut from a video):

* a clip has ``n`` feature rows; its quantised duration is ``d = n / 1.875`` s (VSLNet's convention);
* rows are mean-pooled to at most ``max_video_len`` bins (N = min(n, max_video_len)); bin i covers
  [i·d/N, (i+1)·d/N) seconds from the clip start;
* the GT window [s, e] becomes bins ``start = floor(s·N/d)`` and ``end = ceil(e·N/d) − 1`` (clamped to
  [start, N−1]): the bins the window touches. A decoded pair (i, j) maps back to [i·d/N, (j+1)·d/N].

Text comes either as token ids of open_clip's bundled BPE tokenizer (no download; SOT … EOT, the question
normalised as the official VSLNet preparation does) or as precomputed token features
``<annotation_uid>_<query_idx>.pt`` (L, D), the thesis author's release format.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from repsuite.nlq.annotations import NLQAnnotations, NLQQuery, normalize_question
from repsuite.nlq.features import (
    ROWS_PER_SEC,
    FeatureError,
    FeatureSource,
    concat_sources,
    pool_to_length,
)
from repsuite.nlq.text_store import TextFeatureStore, query_key

__all__ = [
    "Ego4DNLQDataset",
    "NLQSample",
    "bins_to_seconds",
    "collate_nlq",
    "question_tokens",
    "seconds_to_bins",
    "text_feature_input",
    "video_bins",
]

TextMode = Literal["tokens", "features"]
log = logging.getLogger(__name__)
_TOKENIZER: Any = None


def question_tokens(question: str) -> Tensor:
    """open_clip BPE ids (L,) of a normalised question, SOT ... EOT (the model's token-mode input)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        import open_clip

        _TOKENIZER = open_clip.get_tokenizer("ViT-B-16")  # BPE vocabulary ships with open_clip
    ids = _TOKENIZER([normalize_question(question)])[0]  # (77,), SOT ... EOT, 0 padding
    return ids[: int(ids.argmax()) + 1]  # EOT has the largest id


def text_feature_input(features: Tensor) -> Tensor:
    """Token features (L, Dt) as the model reads them: float32, L2-normalised per token (author's release)."""
    return torch.nn.functional.normalize(features.float(), dim=-1)


def video_bins(rows: Tensor, max_video_len: int, temporal_position: bool = False) -> Tensor:
    """A clip's rows (n, ΣD) as the model reads them: N = min(n, max_video_len) bins (N, ΣD).

    With ``temporal_position`` the release's 2-d position (i/N, (i+1)/N) is appended (N, ΣD + 2).
    """
    video = pool_to_length(rows, max_video_len)  # (N, ΣD)
    if not temporal_position:
        return video
    n = video.shape[0]
    pos = torch.arange(n, dtype=video.dtype)
    return torch.cat([video, torch.stack([pos / n, (pos + 1) / n], dim=1)], dim=1)  # (N, ΣD + 2)


def seconds_to_bins(start_sec: float, end_sec: float, duration: float, num_bins: int) -> tuple[int, int]:
    """GT seconds -> inclusive (start, end) bins of a ``duration``-second clip cut into ``num_bins``."""
    scale = num_bins / duration
    start = min(num_bins - 1, max(0, math.floor(start_sec * scale)))
    end = min(num_bins - 1, max(start, math.ceil(end_sec * scale) - 1))
    return start, end


def bins_to_seconds(start: Tensor, end: Tensor, duration: Tensor, num_bins: Tensor) -> Tensor:
    """Inclusive bin pairs -> windows in seconds (..., 2): [start·d/N, (end+1)·d/N].

    ``duration`` and ``num_bins`` must broadcast against ``start`` (e.g. (B, 1) against (B, k)).
    """
    step = duration / num_bins
    return torch.stack([start * step, (end + 1) * step], dim=-1)


@dataclass
class NLQSample:
    """One query: video bins (N, D), text (ids (L,) or features (L, Dt)), labels and identity."""

    video: Tensor
    text: Tensor
    start: int
    end: int
    gt_seconds: tuple[float, float]
    duration: float
    query_id: int
    key: tuple[str, str, int]


class Ego4DNLQDataset(Dataset):
    """Queries of one annotation file with their clip features.

    Args:
        annotations: a parsed annotation file.
        sources: feature sources, concatenated after per-row L2 normalisation (thesis §2.4.1).
        text_mode: ``"tokens"`` (open_clip BPE ids) or ``"features"`` (``text_dir`` files, L2-normalised per
            token as in the author's release).
        text_dir: folder of token features (``text_mode="features"``): ``<annotation_uid>_<query_idx>.pt``
            files, or shards of them (:mod:`repsuite.nlq.text_store`; the folder's manifest says which).
        max_video_len: clips longer than this are mean-pooled to this many bins.
        temporal_position: append the 2-d feature (i/N, (i+1)/N) of each bin (the author's release).
        transform: optional train-time transform ``(rows, start_row, end_row, dataset) -> (rows, s, e)``
            applied to the unpooled rows with the GT in row units (sliding window, video splicing).
        cache_clips: how many clips' features to keep in memory (several queries share a clip).
    """

    def __init__(
        self,
        annotations: NLQAnnotations,
        sources: Sequence[FeatureSource],
        text_mode: TextMode = "tokens",
        text_dir: str | Path | None = None,
        max_video_len: int = 600,
        temporal_position: bool = False,
        transform: Callable[..., tuple[Tensor, float, float]] | None = None,
        cache_clips: int = 256,
    ) -> None:
        if not sources:
            raise ValueError("Ego4DNLQDataset: need at least one feature source")
        if text_mode == "features" and text_dir is None:
            raise ValueError("Ego4DNLQDataset: text_mode='features' needs `text_dir`")
        self.annotations = annotations
        self.queries: list[NLQQuery] = list(annotations.queries)
        self.sources = list(sources)
        self.text_mode = text_mode
        self.text_dir = Path(text_dir) if text_dir is not None else None
        self.text_store = TextFeatureStore(self.text_dir) if self.text_dir is not None else None
        self.max_video_len = max_video_len
        self.temporal_position = temporal_position
        self.transform = transform
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cache_size = cache_clips
        self._donors: tuple[int, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def video_dim(self) -> int:
        """Width of the video input: sum of source dims (+2 with temporal positions)."""
        return sum(s.dim for s in self.sources) + (2 if self.temporal_position else 0)

    def clip_rows(self, clip_uid: str) -> Tensor:
        """(n, ΣD) normalised, concatenated rows of a clip (cached)."""
        if clip_uid in self._cache:
            self._cache.move_to_end(clip_uid)
            return self._cache[clip_uid]
        clip = self.annotations.clips[clip_uid]
        parts = [
            (s.name, s.clip_features(clip_uid, clip.video_uid, clip.video_start_sec, clip.video_end_sec))
            for s in self.sources
        ]
        rows = concat_sources(parts, where=f"clip {clip_uid} of {self.annotations.path}")
        self._cache[clip_uid] = rows
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rows

    def check_files(self, skip_missing: bool = False) -> dict[str, int]:
        """Check every clip's feature files (and text files) before training, not in the middle of an epoch.

        Args:
            skip_missing: drop (and count) the queries whose files are missing or malformed instead of
                raising; meant for training data.

        Returns:
            counts of dropped queries by reason (empty when nothing was dropped).

        Raises:
            FeatureError: listing the first problems and how many clips/queries they affect.
        """
        problems: dict[str, str] = {}  # clip_uid -> message
        for clip_uid in sorted({q.clip_uid for q in self.queries}):
            clip = self.annotations.clips[clip_uid]
            try:
                rows = {
                    s.name: s.clip_num_rows(
                        clip_uid, clip.video_uid, clip.video_start_sec, clip.video_end_sec
                    )
                    for s in self.sources
                }
                if max(rows.values()) - min(rows.values()) > 1:
                    raise FeatureError(
                        f"clip {clip_uid}: feature sources disagree on the number of rows {rows}; they must "
                        "describe the same windows (row counts may differ by at most one)"
                    )
            except FeatureError as err:
                problems[clip_uid] = str(err)
        text_missing: list[NLQQuery] = []
        if self.text_mode == "features":
            has = self.text_store.has
            text_missing = [q for q in self.queries if not has(query_key(q.annotation_uid, q.query_idx))]
        bad = [q for q in self.queries if q.clip_uid in problems]
        if not problems and not text_missing:
            return {}
        if not skip_missing:
            store = self.text_store
            missing = [store.not_found(query_key(q.annotation_uid, q.query_idx)) for q in text_missing[:5]]
            lines = [*list(problems.values())[:5], *missing]
            raise FeatureError(
                f"{self.annotations.path}: {len(problems)} clip(s) with feature problems ({len(bad)} "
                f"queries) and {len(text_missing)} missing text feature file(s); first ones:\n  "
                + "\n  ".join(lines)
            )
        drop = {id(q) for q in bad} | {id(q) for q in text_missing}
        self.queries = [q for q in self.queries if id(q) not in drop]
        counts = {
            "missing or malformed video features": len(bad),
            "missing text features": len({id(q) for q in text_missing} - {id(q) for q in bad}),
        }
        for message in list(problems.values())[:5]:
            log.warning("%s (queries skipped)", message)
        log.warning("%s: skipped %s; %d queries remain", self.annotations.path, counts, len(self.queries))
        return counts

    def donor_clips(self) -> list[str]:
        """Clips video splicing may draw from: those of the kept queries.

        Their files are the ones :meth:`check_files` checked; a clip without queries, or one dropped for
        its files, is never read in the middle of an epoch.
        """
        if self._donors is None or self._donors[0] != len(self.queries):
            self._donors = (len(self.queries), sorted({q.clip_uid for q in self.queries}))
        return self._donors[1]

    def random_clip_rows(self) -> Tensor:
        """Rows of a random donor clip (:meth:`donor_clips`) for video splicing."""
        clip_uids = self.donor_clips()
        return self.clip_rows(clip_uids[int(torch.randint(len(clip_uids), ()))])

    def text_path(self, query: NLQQuery) -> Path:
        """The file holding a query's text features.

        ``<text_dir>/<annotation_uid>_<query_idx>.pt`` (the author's release format), or its shard
        (:mod:`repsuite.nlq.text_store`).
        """
        return self.text_store.path(query_key(query.annotation_uid, query.query_idx))

    def text(self, query: NLQQuery) -> Tensor:
        """Token ids (L,) or token features (L, Dt) of a query."""
        if self.text_mode == "features":
            key = query_key(query.annotation_uid, query.query_idx)
            return text_feature_input(self.text_store.get(key))  # (L, Dt)
        return question_tokens(query.query or "")

    def __getitem__(self, index: int) -> NLQSample:
        query = self.queries[index]
        rows = self.clip_rows(query.clip_uid)
        duration = rows.shape[0] / ROWS_PER_SEC
        gt = (query.gt_start, query.gt_end) if query.gt_start is not None else (0.0, 0.0)
        if self.transform is not None and query.gt_start is not None:
            rows, s_row, e_row = self.transform(rows, gt[0] * ROWS_PER_SEC, gt[1] * ROWS_PER_SEC, self)
            duration = rows.shape[0] / ROWS_PER_SEC
            gt = (s_row / ROWS_PER_SEC, e_row / ROWS_PER_SEC)
        video = video_bins(rows, self.max_video_len, self.temporal_position)  # (N, ΣD [+ 2])
        n = video.shape[0]
        # labels use the window clamped to the quantised duration; `gt` itself stays as annotated so the
        # metric scores against the official window (GT ends may overshoot the clip by up to ~0.6 s)
        label_gt = (min(gt[0], duration), min(gt[1], duration))
        start, end = seconds_to_bins(*label_gt, duration, n) if query.gt_start is not None else (-1, -1)
        return NLQSample(video, self.text(query), start, end, gt, duration, index, query.key)


def collate_nlq(samples: list[NLQSample]) -> dict[str, Any]:
    """Pad a list of samples into a batch.

    Returns a dict with ``video`` (B, Lv, D), ``video_padding_mask`` (B, Lv) (True = padding, as in
    :mod:`repsuite.ops`), ``text`` (B, Lt) ids or (B, Lt, Dt) features, ``text_padding_mask`` (B, Lt),
    ``start``/``end`` (B,) bin labels (−1 without GT), ``gt_seconds`` (B, 2), ``duration`` (B,),
    ``num_bins`` (B,), ``query_id`` (B,) and ``keys`` (list of (clip_uid, annotation_uid, query_idx)).
    """
    b = len(samples)
    lv = max(s.video.shape[0] for s in samples)
    lt = max(s.text.shape[0] for s in samples)
    video = samples[0].video.new_zeros(b, lv, samples[0].video.shape[1])
    vpad = torch.ones(b, lv, dtype=torch.bool)
    text_shape = (b, lt) if samples[0].text.ndim == 1 else (b, lt, samples[0].text.shape[1])
    text = samples[0].text.new_zeros(text_shape)
    tpad = torch.ones(b, lt, dtype=torch.bool)
    for i, s in enumerate(samples):
        video[i, : s.video.shape[0]] = s.video
        vpad[i, : s.video.shape[0]] = False
        text[i, : s.text.shape[0]] = s.text
        tpad[i, : s.text.shape[0]] = False
    return {
        "video": video,
        "video_padding_mask": vpad,
        "text": text,
        "text_padding_mask": tpad,
        "start": torch.tensor([s.start for s in samples]),
        "end": torch.tensor([s.end for s in samples]),
        "gt_seconds": torch.tensor([s.gt_seconds for s in samples], dtype=torch.float64),
        "duration": torch.tensor([s.duration for s in samples], dtype=torch.float64),
        "num_bins": (~vpad).sum(dim=1),
        "query_id": torch.tensor([s.query_id for s in samples]),
        "keys": [s.key for s in samples],
    }
