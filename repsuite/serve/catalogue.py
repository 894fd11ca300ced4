"""What the NLQ page offers: the clips of the dataset a checkpoint was trained on, with their questions.

Built from the data settings saved in an :class:`~repsuite.nlq.NLQPredictor`'s checkpoint (the Ego4D
download folder, its version and feature sources). Clips whose feature files are missing are counted in
``skipped``, not silently dropped; a clip video, when the download has it (``<root>/<version>/clips/
<clip_uid>.mp4``, the layout of ``ego4d --datasets clips``), lets the page play an answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from repsuite.errors import InputError
from repsuite.nlq.annotations import load_nlq_annotations
from repsuite.nlq.datamodule import SPLIT_FILES
from repsuite.nlq.features import FeatureError, FeatureSource, clip_row_range, load_feature_file

__all__ = ["CatalogueClip", "ClipQuestion", "NLQCatalogue"]


@dataclass(frozen=True)
class ClipQuestion:
    """An annotated question and its ground-truth window (clip seconds; None in the test split)."""

    question: str
    window: tuple[float, float] | None


@dataclass
class CatalogueClip:
    """One clip: where its features are, which part of them is the clip, and its annotated questions.

    Args:
        features: each source's file and whether it holds this clip only (else the whole video's rows).
        span: the clip's ``(start, end)`` seconds in its video.
        video: the clip's video file when the download has one.
    """

    clip_uid: str
    video_uid: str
    split: str
    duration: float
    features: dict[str, tuple[Path, bool]]
    span: tuple[float, float]
    questions: list[ClipQuestion]
    video: Path | None = None

    @property
    def label(self) -> str:
        """What the page's clip menu shows."""
        return f"{self.clip_uid} ({self.split}, {self.duration:.0f} s, {len(self.questions)} questions)"

    def feature_rows(self) -> dict[str, Tensor]:
        """Each source's rows of this clip (n, D), as :meth:`NLQPredictor.query` takes them."""
        rows = {}
        for name, (path, per_clip) in self.features.items():
            t = load_feature_file(path)
            rows[name] = t if per_clip else t[slice(*clip_row_range(*self.span, t.shape[0]))]
        return rows

    def ground_truth(self, question: str) -> tuple[float, float] | None:
        """The annotated window of ``question`` on this clip, if it is one of the clip's questions."""
        wanted = question.strip().lower()
        return next((q.window for q in self.questions if q.question.strip().lower() == wanted), None)


class NLQCatalogue:
    """The clips a page can answer questions on (menu order: validation first, then training).

    Args:
        clips: the clips.
        skipped: why clips were left out, with counts (e.g. a missing feature file).
        reason: why the catalogue is empty, when it is.
    """

    def __init__(self, clips: list[CatalogueClip], skipped: Counter | None = None, reason: str = "") -> None:
        self.clips = {c.label: c for c in clips}
        self.skipped = skipped or Counter()
        self.reason = reason

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def labels(self) -> list[str]:
        """Menu entries, in order."""
        return list(self.clips)

    def get(self, label: str) -> CatalogueClip:
        """The clip of a menu entry.

        Raises:
            InputError: no such clip (a request naming something the page never offered).
        """
        if label not in self.clips:
            raise InputError(f"clip {label!r}: not one of this model's {len(self.clips)} clips")
        return self.clips[label]

    @classmethod
    def from_data(cls, data: Mapping[str, Any], splits: tuple[str, ...] = ("val", "train")) -> NLQCatalogue:
        """The clips of the annotation ``splits`` under the checkpoint's data folder that have features."""
        if not data.get("root"):
            return cls([], reason="the checkpoint does not record its data folder")
        base = Path(data["root"]) / data.get("version", "v2")
        try:
            sources = [FeatureSource(n, base / n) for n in data.get("features") or ["slowfast8x8_r101_k400"]]
        except FeatureError as err:
            return cls([], reason=f"the training data is not on this machine ({err})")
        clips: list[CatalogueClip] = []
        skipped: Counter = Counter()
        for split in splits:
            path = base / "annotations" / SPLIT_FILES[split]
            if not path.exists():
                continue
            ann = load_nlq_annotations(path)
            by_clip: dict[str, list[ClipQuestion]] = {}
            for q in ann.queries:
                window = None if q.gt_start is None else (float(q.gt_start), float(q.gt_end))
                by_clip.setdefault(q.clip_uid, []).append(ClipQuestion(q.query or "", window))
            for clip in ann.clips.values():
                try:
                    found = {s.name: s.path_for(clip.clip_uid, clip.video_uid) for s in sources}
                except FeatureError:
                    skipped[f"{split}: no feature file"] += 1
                    continue
                video = base / "clips" / f"{clip.clip_uid}.mp4"
                span = (clip.video_start_sec, clip.video_end_sec)
                questions = by_clip.get(clip.clip_uid, [])
                entry = CatalogueClip(clip.clip_uid, clip.video_uid, split, clip.duration, found, span,
                                      questions, video if video.exists() else None)  # fmt: skip
                clips.append(entry)
        reason = "" if clips else f"no clip of {base / 'annotations'} has its feature files"
        return cls(clips, skipped, reason)
