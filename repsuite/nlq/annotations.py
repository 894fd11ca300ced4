"""Ego4D NLQ annotation files (``nlq_{train,val,test_unannotated}.json``, v1 and v2) as plain records.

Schema facts (shared/reference/nlq.md §1.1–1.2, EGO4D/docs annotation schemas):

* top level: ``version`` ("1" for v1 and the test file, "2.0" for v2 train/val), ``date``, ``description``,
  ``manifest`` (v1/test) **or** ``metadata`` (v2), ``videos``;
* ``videos[].clips[]``: ``clip_uid``, ``video_start_sec``/``video_end_sec`` (clip bounds in the canonical
  video; may be slightly negative), ``clip_end_sec``, ``annotations[]``;
* ``annotations[]``: ``annotation_uid``, ``language_queries[]``, v2 adds ``request_uid``;
* ``language_queries[]``: GT window ``clip_start_sec``/``clip_end_sec`` (seconds from the clip start; what
  evaluation uses), ``query`` and ``template`` (string, null or missing), v2 optional ``answer``. The test
  file has only ``query``.

``query_idx`` is always the position in the raw ``language_queries`` list, also when queries are
dropped, because submissions and the official evaluator index that list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repsuite.errors import InputError

__all__ = [
    "NLQAnnotationError",
    "NLQAnnotations",
    "NLQClip",
    "NLQQuery",
    "load_nlq_annotations",
    "merge_annotations",
    "normalize_question",
    "parse_nlq_annotations",
]

log = logging.getLogger(__name__)

#: Windows at most this long are "zero-length" (one frame at 30 fps), as episodic-memory's filter uses.
ZERO_LENGTH_SEC = 1.0 / 30.0


class NLQAnnotationError(InputError):
    """An annotation file that does not follow the NLQ schema; the message names the file and field."""


@dataclass(frozen=True)
class NLQClip:
    """One clip: the unit NLQ models work on. Times in seconds of the canonical video."""

    clip_uid: str
    video_uid: str
    video_start_sec: float
    video_end_sec: float

    @property
    def duration(self) -> float:
        """Clip length in seconds."""
        return self.video_end_sec - self.video_start_sec


@dataclass(frozen=True)
class NLQQuery:
    """One language query with its GT window (clip-relative seconds; ``None`` in the test file)."""

    clip_uid: str
    video_uid: str
    annotation_uid: str
    query_idx: int
    query: str | None
    template: str | None = None
    gt_start: float | None = None
    gt_end: float | None = None
    request_uid: str | None = None
    answer: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """(clip_uid, annotation_uid, query_idx): how submissions identify a query."""
        return (self.clip_uid, self.annotation_uid, self.query_idx)

    @property
    def has_text(self) -> bool:
        """True when the query has non-blank text."""
        return bool(self.query and self.query.strip())

    @property
    def is_zero_length(self) -> bool:
        """True when the GT window is at most one 30 fps frame long."""
        return (
            self.gt_start is not None
            and self.gt_end is not None
            and self.gt_end - self.gt_start <= ZERO_LENGTH_SEC
        )


@dataclass
class NLQAnnotations:
    """A parsed annotation file: clips, the kept queries, and what was dropped or looked odd."""

    path: str
    version: str
    clips: dict[str, NLQClip]
    queries: list[NLQQuery]
    num_raw_queries: int
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def has_ground_truth(self) -> bool:
        """False for ``nlq_test_unannotated.json`` (no GT windows)."""
        return any(q.gt_start is not None for q in self.queries)

    def summary(self) -> str:
        """One line: kept / raw queries, drops by reason, notable quirks."""
        drops = ", ".join(f"{v} {k}" for k, v in self.dropped.items() if v) or "none"
        notes = ", ".join(f"{v} {k}" for k, v in self.notes.items() if v) or "none"
        return (
            f"{self.path}: version {self.version}, {len(self.clips)} clips, {len(self.queries)}/"
            f"{self.num_raw_queries} queries kept; dropped: {drops}; notes: {notes}"
        )


def normalize_question(text: str) -> str:
    """Question normalisation of the official VSLNet data preparation: strip, drop '?', lowercase, add '?'."""
    return text.strip().strip("?").strip().lower() + "?"


def _req(obj: Mapping[str, Any], key: str, where: str, kinds: tuple[type, ...]) -> Any:
    if not isinstance(obj, Mapping):
        raise NLQAnnotationError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise NLQAnnotationError(f"{where}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise NLQAnnotationError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise NLQAnnotationError(f"{where}.{key}: expected a string or null, got {value!r}")
    return value


@dataclass
class _Counts:
    """What a parse dropped (by reason) and noticed, in :class:`NLQAnnotations` order."""

    dropped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ["zero-length window", "no query text", "GT starts outside the clip", "reversed GT window"], 0
        )
    )
    notes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ["GT ends past the clip end", "zero-length windows", "queries without text"], 0
        )
    )


def _parse_clip(clip: Any, video_uid: str, where: str) -> NLQClip:
    """One ``clips[]`` entry (its bounds checked) without its annotations."""
    clip_uid = _req(clip, "clip_uid", where, (str,))
    start = float(_req(clip, "video_start_sec", where, (int, float)))
    end = float(_req(clip, "video_end_sec", where, (int, float)))
    if end <= start:
        raise NLQAnnotationError(f"{where}: video_end_sec ({end}) must be after video_start_sec ({start})")
    return NLQClip(clip_uid, video_uid, start, end)


def _raw_queries(
    videos: list, source: str, clips: dict[str, NLQClip]
) -> Iterator[tuple[NLQClip, str, str | None, int, Any, str]]:
    """Walk videos → clips → annotations → language queries.

    Yields ``(clip, annotation_uid, request_uid, query_idx, raw query, JSON path)``; each parsed clip is
    added to ``clips`` on the way (clips without queries included).
    """
    for vi, video in enumerate(videos):
        vw = f"{source}: videos[{vi}]"
        video_uid = _req(video, "video_uid", vw, (str,))
        for ci, raw_clip in enumerate(_req(video, "clips", vw, (list,))):
            cw = f"{vw}.clips[{ci}]"
            clip = _parse_clip(raw_clip, video_uid, cw)
            clips[clip.clip_uid] = clip
            for ai, ann in enumerate(_req(raw_clip, "annotations", cw, (list,))):
                aw = f"{cw}.annotations[{ai}]"
                ann_uid, request_uid = (
                    _req(ann, "annotation_uid", aw, (str,)),
                    _opt_str(ann, "request_uid", aw),
                )
                for qi, lq in enumerate(_req(ann, "language_queries", aw, (list,))):
                    yield clip, ann_uid, request_uid, qi, lq, f"{aw}.language_queries[{qi}]"


def _gt_window(
    lq: Any, where: str, clip_len: float, counts: _Counts
) -> tuple[float | None, float | None] | None:
    """A raw query's GT window: ``(None, None)`` without one (test file), ``None`` when invalid (counted)."""
    if not isinstance(lq, Mapping):
        raise NLQAnnotationError(f"{where}: expected an object, got {type(lq).__name__}")
    if "clip_start_sec" not in lq and "clip_end_sec" not in lq:
        return None, None
    gt_start = float(_req(lq, "clip_start_sec", where, (int, float)))
    gt_end = float(_req(lq, "clip_end_sec", where, (int, float)))
    if gt_end < gt_start:
        log.warning("%s: clip_end_sec %s < clip_start_sec %s; dropped", where, gt_end, gt_start)
        counts.dropped["reversed GT window"] += 1
        return None
    if gt_start < 0 or gt_start >= clip_len:
        log.warning("%s: clip_start_sec %s outside the clip [0, %.3f); dropped", where, gt_start, clip_len)
        counts.dropped["GT starts outside the clip"] += 1
        return None
    if gt_end > clip_len:
        counts.notes["GT ends past the clip end"] += 1
    return gt_start, gt_end


def _keep(query: NLQQuery, counts: _Counts, drop_zero_length: bool, drop_empty_query: bool) -> bool:
    """Count the query's quirks; False when an optional filter drops it (counted by reason)."""
    if query.is_zero_length:
        counts.notes["zero-length windows"] += 1
    if not query.has_text:
        counts.notes["queries without text"] += 1
    if drop_zero_length and query.is_zero_length:
        counts.dropped["zero-length window"] += 1
        return False
    if drop_empty_query and not query.has_text:
        counts.dropped["no query text"] += 1
        return False
    return True


def parse_nlq_annotations(
    data: Any, *, source: str = "annotations", drop_zero_length: bool = False, drop_empty_query: bool = False
) -> NLQAnnotations:
    """Parse an NLQ annotation object (see module docstring) into :class:`NLQAnnotations`.

    Invalid windows (reversed, or starting outside the clip) are always dropped and counted: they can
    neither be learned nor answered.

    Args:
        data: the JSON object.
        source: file name used in error messages.
        drop_zero_length: drop queries whose GT window is at most 1/30 s (off by default, as officially).
        drop_empty_query: drop queries with missing/blank text (off by default).

    Raises:
        NLQAnnotationError: naming the file and the JSON path of the offending field.
    """
    version = str(_req(data, "version", source, (str, int, float)))
    videos = _req(data, "videos", source, (list,))
    clips: dict[str, NLQClip] = {}
    queries: list[NLQQuery] = []
    counts = _Counts()
    num_raw = 0
    for clip, ann_uid, request_uid, qi, lq, where in _raw_queries(videos, source, clips):
        num_raw += 1
        window = _gt_window(lq, where, clip.duration, counts)
        if window is None:
            continue
        query = NLQQuery(
            clip_uid=clip.clip_uid,
            video_uid=clip.video_uid,
            annotation_uid=ann_uid,
            query_idx=qi,
            query=_opt_str(lq, "query", where),
            template=_opt_str(lq, "template", where),
            gt_start=window[0],
            gt_end=window[1],
            request_uid=request_uid,
            answer=_opt_str(lq, "answer", where),
        )
        if _keep(query, counts, drop_zero_length, drop_empty_query):
            queries.append(query)
    result = NLQAnnotations(source, version, clips, queries, num_raw, counts.dropped, counts.notes)
    log.info(result.summary())
    return result


def merge_annotations(parts: list[NLQAnnotations], shared_clips: bool = False) -> NLQAnnotations:
    """One training set from several parsed files (e.g. train + val for a test-server entry).

    Args:
        parts: the parsed files, in order (their queries are concatenated in this order).
        shared_clips: allow a clip in several files when they agree on its place in the video — further
            query sources for the same clips, such as narrations as queries (NaQ) next to NLQ train.

    Raises:
        NLQAnnotationError: a clip that appears in two files (the splits of one release never share clips;
            merging two releases' files would count its queries twice), or, with ``shared_clips``, a clip
            whose video times differ between files.
    """
    if len(parts) == 1:
        return parts[0]
    clips: dict[str, NLQClip] = {}
    for part in parts:
        for uid in sorted(clips.keys() & part.clips.keys()):
            a, b = clips[uid], part.clips[uid]
            if not shared_clips:
                raise NLQAnnotationError(
                    f"{part.path}: clip {uid} is also in an earlier training file; the merged training "
                    "splits must not share clips"
                )
            if (
                abs(a.video_start_sec - b.video_start_sec) > 1e-3
                or abs(a.video_end_sec - b.video_end_sec) > 1e-3
            ):
                raise NLQAnnotationError(
                    f"{part.path}: clip {uid} spans [{b.video_start_sec}, {b.video_end_sec}] s of its video "
                    f"here and [{a.video_start_sec}, {a.video_end_sec}] s in an earlier training file"
                )
        clips = part.clips | clips  # the first file's record of a shared clip is kept
    return NLQAnnotations(
        path=" + ".join(p.path for p in parts), version=parts[0].version, clips=clips,
        queries=[q for p in parts for q in p.queries], num_raw_queries=sum(p.num_raw_queries for p in parts),
        dropped=_sum_counts([p.dropped for p in parts]), notes=_sum_counts([p.notes for p in parts]),
    )  # fmt: skip


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for key, n in c.items():
            out[key] = out.get(key, 0) + n
    return out


def load_nlq_annotations(
    path: str | Path, *, drop_zero_length: bool = False, drop_empty_query: bool = False
) -> NLQAnnotations:
    """Read and parse an NLQ annotation file; errors name the file and the JSON path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NLQAnnotationError(f"{path}: no such annotation file") from None
    except json.JSONDecodeError as err:
        raise NLQAnnotationError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return parse_nlq_annotations(
        data, source=str(path), drop_zero_length=drop_zero_length, drop_empty_query=drop_empty_query
    )
