"""Ego4D NLQ scoring with the official semantics, plus submission validation.

The challenge server runs ``evaluate_ego4d_nlq.py`` from EGO4D/episodic-memory (NLQ/VSLNet/utils). This
module re-implements its arithmetic exactly (see shared/reference/nlq.md §2):

* temporal IoU = max(0, min(ends) − max(starts)) / max(0, max(ends) − min(starts)) (0/0 gives NaN);
* an entry is a hit at (t, K) iff any of its first K windows, **in submitted order**, has IoU **> t**;
* R@K = mean of hits over the **submitted entries** (missing queries are not counted, duplicates count
  twice); mIoU = mean IoU of each entry's **first** window.

``strict=True`` is repsuite's stricter reading: every query of the ground-truth file is in the
denominator (a missing one is a miss with IoU 0) and a repeated entry is scored once (its first
occurrence), with a warning.

Malformed input the official script would crash on (unknown clip/annotation, ``query_idx`` out of range,
empty or un-nested ``predicted_times``) raises :class:`SubmissionError` naming the entry.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repsuite.errors import InputError

__all__ = [
    "CHALLENGE",
    "SUBMISSION_VERSION",
    "NLQEvalResult",
    "SubmissionError",
    "evaluate_nlq",
    "format_table",
    "ground_truth_index",
    "load_json",
    "random_window_baseline",
    "temporal_iou",
    "validate_submission",
]

SUBMISSION_VERSION = "1.0"
CHALLENGE = "ego4d_nlq_challenge"

QueryKey = tuple[str, str, int]  # (clip_uid, annotation_uid, query_idx)


class SubmissionError(InputError):
    """A submission or prediction entry that cannot be scored; the message names the entry and field."""


def load_json(path: str | Path) -> Any:
    """Read a JSON file, turning I/O and syntax errors into messages that name the file."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise SubmissionError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None


def temporal_iou(window: Sequence[float], gt: Sequence[float]) -> float:
    """IoU of two [start, end] windows exactly as the official evaluator computes it (NaN for 0/0)."""
    inter = max(0.0, min(window[1], gt[1]) - max(window[0], gt[0]))
    union = max(0.0, max(window[1], gt[1]) - min(window[0], gt[0]))
    if union == 0.0:  # both windows are the same point: numpy's 0/0 gives NaN, which is never > t
        return math.nan
    return inter / union


def ground_truth_index(
    ground_truth: Mapping[str, Any], source: str = "ground truth"
) -> dict[tuple[str, str], list]:
    """Map (clip_uid, annotation_uid) to that annotation's raw ``language_queries`` list."""
    index: dict[tuple[str, str], list] = {}
    try:
        videos = ground_truth["videos"]
    except (KeyError, TypeError):
        raise SubmissionError(f"{source}: expected an NLQ annotation object with a 'videos' list") from None
    for vi, video in enumerate(videos):
        for ci, clip in enumerate(video.get("clips", [])):
            for ai, ann in enumerate(clip.get("annotations", [])):
                try:
                    index[(clip["clip_uid"], ann["annotation_uid"])] = ann["language_queries"]
                except KeyError as err:
                    raise SubmissionError(
                        f"{source}: videos[{vi}].clips[{ci}].annotations[{ai}] has no {err.args[0]!r}"
                    ) from None
    return index


def _entry_name(i: int, entry: Any) -> str:
    if isinstance(entry, Mapping):
        return (
            f"results[{i}] (clip_uid={entry.get('clip_uid')!r}, "
            f"annotation_uid={entry.get('annotation_uid')!r}, query_idx={entry.get('query_idx')!r})"
        )
    return f"results[{i}]"


def _check_entry(i: int, entry: Any, source: str) -> None:
    where = f"{source}: {_entry_name(i, entry)}"
    if not isinstance(entry, Mapping):
        raise SubmissionError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("clip_uid", "annotation_uid"):
        if not isinstance(entry.get(key), str):
            raise SubmissionError(f"{where}: `{key}` must be a string, got {entry.get(key)!r}")
    qidx = entry.get("query_idx")
    if isinstance(qidx, bool) or not isinstance(qidx, int) or qidx < 0:
        raise SubmissionError(f"{where}: `query_idx` must be a non-negative integer, got {qidx!r}")
    times = entry.get("predicted_times")
    if not isinstance(times, list) or not times:
        raise SubmissionError(
            f"{where}: `predicted_times` must be a non-empty list of [start_sec, end_sec] pairs, "
            f"got {times!r}"
        )
    for j, window in enumerate(times):
        ok = (
            isinstance(window, list)
            and len(window) == 2
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window
            )
        )
        if not ok:
            raise SubmissionError(
                f"{where}: `predicted_times[{j}]` must be a [start_sec, end_sec] pair of finite numbers, "
                f"got {window!r}"
            )


def validate_submission(
    submission: Any,
    ground_truth: Mapping[str, Any] | None = None,
    *,
    source: str = "submission",
    max_windows: int | None = None,
    require_ordered: bool = False,
) -> list[dict]:
    """Check a submission object and return its ``results`` list.

    Always checked: ``version`` == "1.0", ``challenge`` == "ego4d_nlq_challenge", every entry's types,
    a non-empty list of [start, end] pairs. With ``ground_truth``: every (clip_uid, annotation_uid) exists
    and ``query_idx`` indexes its raw ``language_queries``. ``max_windows`` and ``require_ordered`` (start
    <= end) are stricter checks for writing submissions; the official scorer accepts both.

    Raises:
        SubmissionError: naming the file (``source``), the entry and the field.
    """
    if not isinstance(submission, Mapping):
        raise SubmissionError(f"{source}: expected a JSON object, got {type(submission).__name__}")
    if submission.get("version") != SUBMISSION_VERSION:
        raise SubmissionError(
            f"{source}: `version` must be {SUBMISSION_VERSION!r}, got {submission.get('version')!r}"
        )
    if submission.get("challenge") != CHALLENGE:
        raise SubmissionError(
            f"{source}: `challenge` must be {CHALLENGE!r}, got {submission.get('challenge')!r}"
        )
    results = submission.get("results")
    if not isinstance(results, list):
        raise SubmissionError(f"{source}: `results` must be a list, got {type(results).__name__}")
    index = ground_truth_index(ground_truth) if ground_truth is not None else None
    for i, entry in enumerate(results):
        _check_entry(i, entry, source)
        times = entry["predicted_times"]
        if max_windows is not None and len(times) > max_windows:
            raise SubmissionError(
                f"{source}: {_entry_name(i, entry)}: {len(times)} windows, at most {max_windows} allowed"
            )
        if require_ordered:
            for j, (s, e) in enumerate(times):
                if s > e:
                    raise SubmissionError(
                        f"{source}: {_entry_name(i, entry)}: `predicted_times[{j}]` starts after it ends "
                        f"({s} > {e})"
                    )
        if index is not None:
            _lookup(index, entry, i, source)
    return list(results)


def _lookup(index: Mapping[tuple[str, str], list], entry: Mapping, i: int, source: str) -> Mapping:
    key = (entry["clip_uid"], entry["annotation_uid"])
    if key not in index:
        raise SubmissionError(
            f"{source}: {_entry_name(i, entry)}: no such clip/annotation in the ground truth"
        )
    queries = index[key]
    if not 0 <= entry["query_idx"] < len(queries):
        raise SubmissionError(
            f"{source}: {_entry_name(i, entry)}: `query_idx` out of range; that annotation has "
            f"{len(queries)} language queries"
        )
    return queries[entry["query_idx"]]


@dataclass
class NLQEvalResult:
    """Scores of one evaluation; recalls and mIoU are fractions in [0, 1] (the table shows ×100)."""

    thresholds: tuple[float, ...]
    top_k: tuple[int, ...]
    recall: dict[tuple[float, int], float]
    mean_iou: float
    num_evaluated: int
    num_gt_queries: int
    strict: bool = False
    num_missing: int = 0
    num_duplicates: int = 0
    per_entry_iou: list[list[float]] = field(default_factory=list, repr=False)

    @property
    def mean_r1(self) -> float:
        """Average of R@1 over the thresholds (the leaderboard's "mean R@1" for t in {0.3, 0.5})."""
        if 1 not in self.top_k:
            raise KeyError("mean R@1 needs K=1 among top_k")
        return sum(self.recall[(t, 1)] for t in self.thresholds) / len(self.thresholds)

    def as_dict(self) -> dict[str, float | int]:
        """Flat dict for logging: ``R@1_IoU0.3`` … (×100), ``mIoU`` (×100), ``mean_R@1`` (×100), counts."""
        out: dict[str, float | int] = {
            f"R@{k}_IoU{t:g}": 100 * self.recall[(t, k)] for k in self.top_k for t in self.thresholds
        }
        out["mIoU"] = 100 * self.mean_iou
        if 1 in self.top_k:
            out["mean_R@1"] = 100 * self.mean_r1
        out.update(
            evaluated=self.num_evaluated,
            gt_queries=self.num_gt_queries,
            missing=self.num_missing,
            duplicates=self.num_duplicates,
        )
        return out


def format_table(result: NLQEvalResult) -> str:
    """The official table layout (Rank@K / mIoU@t columns, then mIoU), ×100 with two decimals."""
    headers = [f"Rank@{k} mIoU@{t:g}" for k in result.top_k for t in result.thresholds] + ["mIoU"]
    values = [f"{100 * result.recall[(t, k)]:.02f}" for k in result.top_k for t in result.thresholds]
    values.append(f"{100 * result.mean_iou:.02f}")
    if 1 in result.top_k:
        headers.append("mean R@1")
        values.append(f"{100 * result.mean_r1:.02f}")
    widths = [max(len(h), len(v)) + 2 for h, v in zip(headers, values, strict=True)]
    sep = "+" + "+".join("-" * w for w in widths) + "+"
    row = lambda cells: "|" + "|".join(c.center(w) for c, w in zip(cells, widths, strict=True)) + "|"  # noqa: E731
    return "\n".join([sep, row(headers), sep, row(values), sep])


def _entries(predictions: Mapping[str, Any] | Iterable[Mapping[str, Any]], source: str) -> list:
    """The result entries of a submission object (validated) or of a bare list (each entry checked)."""
    if isinstance(predictions, Mapping):
        return validate_submission(predictions, source=source)
    entries = list(predictions)
    for i, entry in enumerate(entries):
        _check_entry(i, entry, source)
    return entries


@dataclass
class _Scores:
    """Per-entry IoUs and hits as the entries are scored, before any missing queries are added."""

    hits: dict[tuple[float, int], list[bool]]
    first_iou: list[float] = field(default_factory=list)
    per_entry: list[list[float]] = field(default_factory=list)
    seen: set[QueryKey] = field(default_factory=set)
    duplicates: int = 0

    def add(self, ious: list[float]) -> None:
        """Score one entry: IoU of its first window, hit at (t, K) iff any of its first K IoUs is > t."""
        self.per_entry.append(ious)
        self.first_iou.append(ious[0])
        for t, k in self.hits:
            self.hits[(t, k)].append(any(v > t for v in ious[:k]))  # NaN > t is False, as in numpy

    def add_misses(self, n: int) -> None:
        """Strict mode: ``n`` ground-truth queries without prediction, each a miss with IoU 0."""
        for lst in self.hits.values():
            lst.extend([False] * n)
        self.first_iou.extend([0.0] * n)


def _warn_duplicates(duplicates: int, strict: bool, source: str) -> None:
    """Repeated entries: strict mode scores the first, the official scorer counts each (warned, not fatal)."""
    if duplicates and strict:
        message = f"{source}: {duplicates} duplicate entries ignored (strict mode scores the first)"
        warnings.warn(message, stacklevel=3)
    elif duplicates:
        message = f"{source}: {duplicates} duplicate entries, each counted (official behaviour)"
        warnings.warn(message, stacklevel=3)


def evaluate_nlq(
    predictions: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    ground_truth: Mapping[str, Any],
    thresholds: Sequence[float] = (0.3, 0.5),
    top_k: Sequence[int] = (1, 5),
    *,
    strict: bool = False,
    source: str = "predictions",
) -> NLQEvalResult:
    """Score predictions against an NLQ annotation file with the official semantics.

    Args:
        predictions: a submission object (``{"version", "challenge", "results"}``, validated) or the bare
            list of result entries.
        ground_truth: the parsed ``nlq_val.json`` (any version).
        thresholds: IoU thresholds t (hit iff IoU > t).
        top_k: K values for R@K.
        strict: denominator = every ground-truth query; missing = miss; duplicates scored once.
        source: name used in error messages (the file path).
    """
    entries = _entries(predictions, source)
    index = ground_truth_index(ground_truth)
    num_gt = sum(len(q) for q in index.values())
    thresholds, top_k = tuple(float(t) for t in thresholds), tuple(int(k) for k in top_k)
    scores = _Scores({(t, k): [] for t in thresholds for k in top_k})
    for i, entry in enumerate(entries):
        gt_query = _lookup(index, entry, i, source)
        key = (entry["clip_uid"], entry["annotation_uid"], entry["query_idx"])
        if key in scores.seen:
            scores.duplicates += 1
            if strict:
                continue
        scores.seen.add(key)
        gt = (gt_query["clip_start_sec"], gt_query["clip_end_sec"])
        scores.add([temporal_iou(w, gt) for w in entry["predicted_times"]])
    missing = 0
    if strict:
        missing = len({(c, a, q) for (c, a), qs in index.items() for q in range(len(qs))} - scores.seen)
        scores.add_misses(missing)
    _warn_duplicates(scores.duplicates, strict, source)
    n = len(scores.first_iou)
    recall = {key: (sum(v) / n if n else math.nan) for key, v in scores.hits.items()}
    mean_iou = sum(scores.first_iou) / n if n else math.nan
    return NLQEvalResult(
        thresholds, top_k, recall, mean_iou, len(scores.per_entry), num_gt, strict, missing,
        scores.duplicates, scores.per_entry,
    )  # fmt: skip


def random_window_baseline(
    predictions: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    ground_truth: Mapping[str, Any],
    seed: int = 0,
) -> list[dict]:
    """The same entries with every window moved to a uniformly random place in its clip (same length).

    Scoring this next to the real predictions gives a chance level for exactly the same queries and
    window lengths.
    """
    import random

    rng = random.Random(seed)
    entries = predictions["results"] if isinstance(predictions, Mapping) else list(predictions)
    durations = {
        clip["clip_uid"]: float(clip.get("video_end_sec", 0.0)) - float(clip.get("video_start_sec", 0.0))
        for video in ground_truth["videos"]
        for clip in video.get("clips", [])
    }
    out = []
    for entry in entries:
        duration = durations.get(entry["clip_uid"], 0.0)
        windows = []
        for s, e in entry["predicted_times"]:
            length = min(max(0.0, e - s), duration)
            start = rng.uniform(0.0, max(0.0, duration - length))
            windows.append([start, start + length])
        out.append({**entry, "predicted_times": windows})
    return out
