"""Narrations as queries (NaQ): Ego4D's dense narrations turned into NLQ-format training queries.

Input, in the Ego4D download (``ROOT/<version>/annotations/``):

* ``narration.json``: ``{video_uid: {"narration_pass_1": {"narrations": [{"timestamp_sec", "timestamp_frame",
  "narration_text", "annotation_uid"}, ...], "summaries": [...]}, "narration_pass_2": {...}}, ...}`` (either
  pass may be missing);
* the episodic-memory annotation files of the split (``nlq_<split>.json`` and, when present,
  ``vq_<split>.json`` / ``moments_<split>.json``), whose clips are where NaQ queries may fall.

Each narration becomes a window by the EgoClip rule (EgoVLP, Lin et al. 2022, §3.1): for a narration at
``t`` in video ``v``, ``[t − β_v / 2α, t + β_v / 2α]`` seconds, where ``β_v`` is the mean gap between
consecutive narrations of ``v`` and ``α`` the mean of ``β_v`` over all videos (so windows average ~1 s and are
longer where narrations are sparse). An EgoVLP ``egoclip.csv`` (tab-separated, ``video_uid``,
``clip_start``, ``clip_end``, ``clip_text``) may be given instead. As in NaQ
(``srama2512/NaQ:utils/create_naq_dataset.py``), a narration is kept when its whole window lies inside an
episodic-memory clip of the split, and becomes a query of that clip in clip seconds. Text is cleaned:
``#C C`` / ``#C`` → "the camera wearer", ``#O`` → "someone", other ``#`` tags dropped; narrations marked
unsure, and empty ones, are dropped and counted.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from repsuite.errors import InputError

__all__ = [
    "NaQError",
    "Narration",
    "build_naq",
    "clean_narration",
    "egoclip_windows",
    "merge_annotations",
    "read_egoclip_csv",
    "read_narrations",
]

PASSES = ("narration_pass_1", "narration_pass_2")
_EPS = 1e-3
_UNSURE = re.compile(r"#\s*unsure", re.IGNORECASE)


class NaQError(InputError):
    """A narration or annotation file that cannot be read as documented."""


@dataclass(frozen=True)
class Narration:
    """One narration: video seconds and raw text, and which pass wrote it."""

    video_uid: str
    time: float
    text: str
    source: str


def read_narrations(path: str | Path) -> dict[str, list[Narration]]:
    """``narration.json`` → each video's narrations (both passes, sorted by time).

    Raises:
        NaQError: unreadable JSON or a field of the wrong type; the message names the file and the field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise NaQError(f"{path}: cannot be read as JSON ({err})") from err
    if not isinstance(raw, dict):
        raise NaQError(
            f"{path}: expected an object of video_uid -> narration passes, got {type(raw).__name__}"
        )
    out: dict[str, list[Narration]] = {}
    for video_uid, passes in raw.items():
        if not isinstance(passes, dict):
            raise NaQError(f"{path}: [{video_uid!r}] must be an object of narration passes")
        items = []
        for name in PASSES:
            if name not in passes:  # a video narrated once has no second pass
                continue
            entries = passes[name].get("narrations") if isinstance(passes[name], dict) else None
            if not isinstance(entries, list):
                raise NaQError(f"{path}: [{video_uid!r}][{name!r}].narrations must be a list")
            for i, n in enumerate(entries):
                where = f"{path}: [{video_uid!r}][{name!r}].narrations[{i}]"
                t = n.get("timestamp_sec") if isinstance(n, dict) else None
                if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                    raise NaQError(f"{where}.timestamp_sec: expected seconds >= 0, got {t!r}")
                text = n.get("narration_text", "")
                if not isinstance(text, str):
                    raise NaQError(f"{where}.narration_text: expected a string, got {type(text).__name__}")
                items.append(Narration(video_uid, float(t), text, name))
        out[video_uid] = sorted(items, key=lambda n: (n.time, n.source))
    return out


def clean_narration(text: str) -> str | None:
    """Narration text as a query, or None when it is empty or marked unsure."""
    if _UNSURE.search(text):
        return None
    text = re.sub(r"#C\s+C\b", "the camera wearer", text)
    text = re.sub(r"#C\b", "the camera wearer", text)
    text = re.sub(r"#O\b", "someone", text)
    text = re.sub(r"#\w+", "", text)  # other tags (#summary, #unknown, ...)
    text = " ".join(text.split()).strip(" .")
    return text or None


def egoclip_windows(
    narrations: dict[str, list[Narration]],
) -> dict[str, list[tuple[float, float, Narration]]]:
    """Each narration's window by the EgoClip rule (see the module docstring), per video.

    ``β_v`` pools the gaps of each pass (consecutive narrations of one annotator); a video with fewer than two
    narrations in every pass gets ``β_v = α``, i.e. the dataset's mean window of 1 s.
    """
    betas = {}
    for video, items in narrations.items():
        gaps = []
        for name in PASSES:
            times = [n.time for n in items if n.source == name]
            gaps += [b - a for a, b in pairwise(times)]
        if gaps:
            betas[video] = sum(gaps) / len(gaps)
    alpha = sum(betas.values()) / len(betas) if betas else 1.0
    alpha = alpha if alpha > 0 else 1.0
    out = {}
    for video, items in narrations.items():
        half = betas.get(video, alpha) / (2 * alpha)
        out[video] = [(max(0.0, n.time - half), n.time + half, n) for n in items]
    return out


def read_egoclip_csv(path: str | Path) -> dict[str, list[tuple[float, float, Narration]]]:
    """EgoVLP's ``egoclip.csv`` (tab-separated) → windows per video, as :func:`egoclip_windows` gives them."""
    path = Path(path)
    out: dict[str, list[tuple[float, float, Narration]]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"video_uid", "clip_start", "clip_end", "clip_text"} - set(reader.fieldnames or [])
        if missing:
            raise NaQError(f"{path}: missing columns {sorted(missing)} (expected EgoVLP's egoclip.csv)")
        for i, row in enumerate(reader, start=2):
            try:
                start, end = float(row["clip_start"]), float(row["clip_end"])
            except (TypeError, ValueError):
                raise NaQError(f"{path}: line {i}: clip_start / clip_end are not numbers") from None
            n = Narration(
                row["video_uid"], (start + end) / 2, row["clip_text"] or "", row.get("narration_source", "")
            )
            out.setdefault(row["video_uid"], []).append((start, end, n))
    return out


def _em_clips(annotations: Path, split: str) -> dict[str, list[dict]]:
    """Episodic-memory clips of a split, per video: from nlq (and vq / moments when present) files."""
    clips: dict[tuple[str, str], dict] = {}
    names = [f"{task}_{split}.json" for task in ("nlq", "vq", "moments")]
    found = [annotations / n for n in names if (annotations / n).exists()]
    if not found:
        raise NaQError(
            f"{annotations}: none of {names} exists (the episodic-memory annotations of '{split}')"
        )
    for path in found:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise NaQError(f"{path}: cannot be read as JSON ({err})") from err
        for i, v in enumerate(data.get("videos", []) if isinstance(data, dict) else []):
            for j, c in enumerate(v.get("clips", []) if isinstance(v, dict) else []):
                where = f"{path}: videos[{i}].clips[{j}]"
                try:
                    key = (str(v["video_uid"]), str(c["clip_uid"]))
                    span = (float(c["video_start_sec"]), float(c["video_end_sec"]))
                except KeyError as err:
                    raise NaQError(f"{where}: missing field {err.args[0]!r}") from None
                except (TypeError, ValueError):
                    raise NaQError(f"{where}: video_start_sec / video_end_sec must be numbers") from None
                clips.setdefault(
                    key, {"clip_uid": key[1], "video_start_sec": span[0], "video_end_sec": span[1]}
                )
    per_video: dict[str, list[dict]] = {}
    for (video, _), clip in sorted(clips.items()):
        per_video.setdefault(video, []).append(clip)
    return per_video


def build_naq(
    root: str | Path, version: str = "v2", split: str = "train", egoclip: str | Path | None = None
) -> tuple[dict[str, Any], Counter]:
    """NLQ-format queries from the narrations of ``split``'s episodic-memory clips, and what was dropped.

    Returns:
        the annotation file (the ``nlq_train.json`` schema: videos → clips → annotations → language_queries)
        and counts: ``videos``, ``clips``, ``kept``, and the dropped narrations by reason.
    """
    annotations = Path(root) / version / "annotations"
    clips = _em_clips(annotations, split)
    if egoclip is not None:
        windows = read_egoclip_csv(egoclip)
    else:
        windows = egoclip_windows(read_narrations(annotations / "narration.json"))
    counts: Counter = Counter()
    videos = []
    for video_uid in sorted(clips):
        out_clips = []
        items = windows.get(video_uid, [])
        inside = [False] * len(items)
        for clip in clips[video_uid]:
            c0, c1 = clip["video_start_sec"], clip["video_end_sec"]
            queries = []
            for k, (s, e, n) in enumerate(items):
                if s < c0 - _EPS or e > c1 + _EPS:  # within a millisecond counts as inside (float sums)
                    continue
                s, e = max(s, c0), min(e, c1)
                inside[k] = True
                text = clean_narration(n.text)
                if text is None:
                    counts["dropped: unsure or empty text"] += 1
                    continue
                queries.append({
                    "clip_start_sec": round(s - c0, 4), "clip_end_sec": round(e - c0, 4),
                    "video_start_sec": round(s, 4), "video_end_sec": round(e, 4),
                    "video_start_frame": math.floor(s * 30), "video_end_frame": math.ceil(e * 30),
                    "template": None, "query": text, "narration_source": n.source,
                })  # fmt: skip
            counts["kept"] += len(queries)
            if queries:
                counts["clips"] += 1
                out_clips.append(clip | {
                    "video_start_frame": math.floor(c0 * 30), "video_end_frame": math.ceil(c1 * 30),
                    "annotations": [{"annotation_uid": f"naq_{video_uid}_{clip['clip_uid']}",
                                     "language_queries": queries}],
                })  # fmt: skip
        counts["dropped: not inside an episodic-memory clip"] += inside.count(False)
        if out_clips:
            counts["videos"] += 1
            videos.append({"video_uid": video_uid, "split": split, "clips": out_clips})
    header = {"version": "2.0" if version == "v2" else "1", "description": f"NaQ queries ({split})"}
    return header | {"videos": videos}, counts


def merge_annotations(naq: dict[str, Any], nlq: dict[str, Any]) -> dict[str, Any]:
    """One training file with every NLQ and NaQ query: clips shared by both keep both annotation lists.

    Raises:
        NaQError: a clip whose video times differ between the two files.
    """
    merged: dict[str, dict] = {}
    order: list[str] = []
    for source in (nlq, naq):
        for v in source.get("videos", []):
            if v["video_uid"] not in merged:
                merged[v["video_uid"]] = {"video_uid": v["video_uid"], "split": v.get("split"), "clips": {}}
                order.append(v["video_uid"])
            clips = merged[v["video_uid"]]["clips"]
            for c in v.get("clips", []):
                have = clips.get(c["clip_uid"])
                if have is None:
                    clips[c["clip_uid"]] = dict(c, annotations=list(c.get("annotations", [])))
                    continue
                for key in ("video_start_sec", "video_end_sec"):
                    if not math.isclose(have[key], c[key], abs_tol=1e-3):
                        raise NaQError(
                            f"clip {c['clip_uid']}: {key} {have[key]} in one file, {c[key]} in the other"
                        )
                have["annotations"] += c.get("annotations", [])
    videos = [dict(merged[u], clips=list(merged[u]["clips"].values())) for u in order]
    return {k: v for k, v in nlq.items() if k != "videos"} | {"videos": videos}
