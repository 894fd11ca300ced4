"""Synthetic Ego4D NLQ data written in the exact on-disk layout of the official download.

Layout (what ``ego4d --datasets annotations <features> --benchmarks nlq --version v2`` writes under ROOT)::

    ROOT/v2/annotations/nlq_train.json, nlq_val.json, nlq_test_unannotated.json
    ROOT/v2/<source>/<video_uid>.pt            one (N, D) float tensor per canonical 30 fps video
    ROOT/v2/<text_source>/<annotation_uid>_<query_idx>.pt   optional (L, D) token features (author's format)

The answer is learnable from the features *and* the question: every clip shows several "object events"
(rows where an object's signature vector is added to the background), and each question asks where one
object was; the other objects' events in the same clip are distractors, so a model that ignores the
question cannot beat chance. Clips start at arbitrary (unaligned) times inside their video and the index
math is the library's own (:mod:`repsuite.nlq.features`), so slicing bugs show up as wrong answers.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from repsuite.nlq.features import ROWS_PER_SEC, clip_row_range, official_num_rows

__all__ = ["OBJECTS", "SyntheticSpec", "write_synthetic_ego4d"]

OBJECTS = (
    "knife", "cup", "keys", "phone", "wallet", "scissors", "spoon", "plate", "bottle", "towel", "book",
    "laptop", "remote", "pen", "hammer", "bowl", "glasses", "shoe", "bag", "sponge", "lid", "pan", "tape",
    "brush",
)  # fmt: skip
#: further object words for a larger, long-tailed vocabulary (``SyntheticSpec.num_objects`` > 24)
MORE_OBJECTS = tuple(
    "fork mug jar box basket bucket ladder drill screwdriver wrench saw nail screw glue paint roller rag "
    "broom mop vacuum hose rake shovel glove hat jacket sock belt watch ring necklace comb mirror soap "
    "toothbrush razor candle lamp pillow blanket curtain chair stool table shelf padlock cabinet fridge "
    "oven kettle toaster blender whisk ladle grater peeler spatula colander tray napkin straw can carton "
    "cereal bread cheese egg apple banana onion carrot potato tomato lemon pepper salt sugar flour rice "
    "pasta sauce oil charger cable battery headphones flashlight tablet mouse keyboard notebook folder "
    "envelope stapler ruler calculator".split()
)
TEMPLATES = (
    ("Objects: Where is object X before / after event Y?", "where did i put the {}?"),
    ("Objects: Where is object X?", "where is the {}?"),
    ("Objects: In what location did I see object X ?", "in what location did i see the {}?"),
)


@dataclass
class SyntheticSpec:
    """Sizes of a synthetic NLQ download (defaults: a few minutes of CPU training for the demo)."""

    num_videos: dict[str, int] | None = None  # per split; default train 24, val 6, test 4
    clips_per_video: int = 2
    clip_seconds: tuple[float, float] = (60.0, 120.0)
    events_per_clip: int = 4
    queries_per_clip: int = 3
    event_seconds: tuple[float, float] = (2.0, 8.0)
    sources: dict[str, int] | None = None  # source folder -> dim; default slowfast 64-d + clip 32-d
    text_source: str | None = "clip_text_vitb16"
    text_dim: int = 32
    narrations: bool = True  # also write annotations/narration.json (dense narrations of the events)
    num_objects: int = 24  # object vocabulary: OBJECTS, then MORE_OBJECTS (at most 24 + 96)
    object_zipf: float = 0.0  # > 0: object i of the vocabulary occurs with weight 1 / (i + 1)^zipf (a long
    # tail, as real NLQ's, where few questions name most objects); 0: uniform
    noise: float = 1.0
    signal: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.num_videos = self.num_videos or {"train": 24, "val": 6, "test": 4}
        self.sources = self.sources or {"slowfast8x8_r101_k400": 64, "clip_vitb16": 32}
        most = len(OBJECTS) + len(MORE_OBJECTS)
        if not self.events_per_clip <= self.num_objects <= most:
            raise ValueError(
                f"SyntheticSpec: num_objects={self.num_objects}: expected events_per_clip "
                f"({self.events_per_clip}) to {most}"
            )

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The object words events and questions are drawn from."""
        return (OBJECTS + MORE_OBJECTS)[: self.num_objects]


def _unit(g: torch.Generator, n: int, d: int) -> torch.Tensor:
    v = torch.randn(n, d, generator=g)
    return v / v.norm(dim=1, keepdim=True)


def write_synthetic_ego4d(root: str | Path, spec: SyntheticSpec | None = None, version: str = "v2") -> Path:
    """Write a synthetic NLQ download under ``root/version`` and return that folder."""
    spec = spec or SyntheticSpec()
    rng = random.Random(spec.seed)
    g = torch.Generator().manual_seed(spec.seed)
    base = Path(root) / version
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    signatures = {name: _unit(g, len(OBJECTS), dim) for name, dim in spec.sources.items()}
    word_vectors = _unit(g, len(OBJECTS) + 16, spec.text_dim)  # objects, then filler words
    g_actions = torch.Generator().manual_seed(spec.seed + 7741)  # its own stream: the rest stays the same
    action_signatures = {name: _unit(g_actions, len(_FILLERS), dim) for name, dim in spec.sources.items()}
    extra = spec.num_objects - len(OBJECTS)
    if extra > 0:  # the further objects' signatures and words from their own stream too
        g_more = torch.Generator().manual_seed(spec.seed + 7753)
        for name, dim in spec.sources.items():
            signatures[name] = torch.cat([signatures[name], _unit(g_more, extra, dim)])
        more_words = _unit(g_more, extra, spec.text_dim)
        word_vectors = torch.cat([word_vectors[: len(OBJECTS)], more_words, word_vectors[len(OBJECTS) :]])
    for name in spec.sources:
        (base / name).mkdir(exist_ok=True)
    if spec.text_source:
        (base / spec.text_source).mkdir(exist_ok=True)

    split_names = {"train": "nlq_train.json", "val": "nlq_val.json", "test": "nlq_test_unannotated.json"}
    video_counter = 0
    narrations: dict[str, dict] = {}
    for split, count in spec.num_videos.items():
        videos = []
        for _ in range(count):
            video_uid = f"{split}-video-{video_counter:04d}"
            video_counter += 1
            clip_lengths = [rng.uniform(*spec.clip_seconds) for _ in range(spec.clips_per_video)]
            gaps = [rng.uniform(3.0, 20.0) for _ in range(spec.clips_per_video + 1)]
            total_sec = sum(clip_lengths) + sum(gaps)
            frames = int(total_sec * 30)
            n_rows = official_num_rows(frames)
            feats = {
                name: torch.randn(n_rows, dim, generator=g) * spec.noise / math.sqrt(dim)
                for name, dim in spec.sources.items()
            }
            clips, t = [], gaps[0]
            events: list[tuple[float, float, str]] = []  # (video start, end seconds, object) of every event
            for ci, length in enumerate(clip_lengths):
                start, end = t + rng.uniform(0, 0.5), t + length
                t = end + gaps[ci + 1]
                clips.append(
                    _make_clip(
                        rng,
                        g,
                        spec,
                        split,
                        video_uid,
                        ci,
                        start,
                        end,
                        n_rows,
                        feats,
                        signatures,
                        word_vectors,
                        base,
                        events,
                    )
                )
            if spec.narrations:
                narrations[video_uid], actions = _narrate(
                    random.Random(f"{spec.seed}-{video_uid}"), total_sec, events
                )
                # what the narrators saw between the events is in the video too (as in real narrations,
                # every one describes something visible): ~1 s of the action's own signature
                for t, k in actions:
                    r0 = max(0, round((t - 0.5) * ROWS_PER_SEC))
                    r1 = min(n_rows, round((t + 0.5) * ROWS_PER_SEC) + 1)
                    for name, tensor in feats.items():
                        tensor[r0:r1] += spec.signal * action_signatures[name][k]
            for name, tensor in feats.items():
                torch.save(tensor.contiguous(), base / name / f"{video_uid}.pt")
            videos.append({"video_uid": video_uid, "split": split, "clips": clips})
        data = _file_header(split, version) | {"videos": videos}
        (base / "annotations" / split_names[split]).write_text(json.dumps(data, indent=1))
    if spec.narrations:
        (base / "annotations" / "narration.json").write_text(json.dumps(narrations))
    return base


_FILLERS = ("#C C looks around", "#C C walks in the room", "#C C adjusts the camera", "#C C stands still",
            "#O man X talks to C", "#C C opens a drawer")  # fmt: skip
_ACTIONS = ("#C C picks up the {}", "#C C holds the {}", "#C C puts down the {}", "#C C looks at the {}")


def _narrate(
    rng: random.Random, seconds: float, events: list[tuple[float, float, str]]
) -> tuple[dict, list[tuple[float, int]]]:
    """Two narration passes in Ego4D's layout, and the background actions they narrate.

    Between the events (narrated in the questions' words) the camera wearer does other things every few
    seconds (``_FILLERS``); each pass narrates most of them, with its own timing jitter. About 4% of
    narrations are marked ``#unsure``; every third video has no second pass, as some real ones.

    Returns:
        the video's ``narration.json`` entry and the actions (video second, ``_FILLERS`` index).
    """
    actions = []
    t = rng.uniform(0.5, 3.0)
    while t < seconds:
        actions.append((t, rng.randrange(len(_FILLERS))))
        t += rng.uniform(2.0, 6.0)

    def one_pass(jitter: float, coverage: float) -> list[dict]:
        items = [
            (min(max(t + rng.uniform(-jitter, jitter), 0.0), seconds), _FILLERS[k])
            for t, k in actions
            if rng.random() < coverage
        ]
        for start, end, obj in events:
            for _ in range(rng.choice((1, 2))):
                t = min(max(rng.uniform(start, end) + rng.uniform(-jitter, jitter), 0.0), seconds)
                items.append((t, rng.choice(_ACTIONS).format(obj)))
        items = [(t, "#C C picks #unsure" if rng.random() < 0.04 else text) for t, text in items]
        return [{"timestamp_sec": round(t, 3), "timestamp_frame": int(t * 30), "narration_text": text,
                 "annotation_uid": f"narr-{i}"} for i, (t, text) in enumerate(sorted(items))]  # fmt: skip

    def summary(text: str) -> list[dict]:
        return [
            {"start_sec": 0.0, "end_sec": round(seconds, 3), "summary_text": text, "annotation_uid": "sum"}
        ]

    out = {
        "narration_pass_1": {
            "narrations": one_pass(0.3, 0.9),
            "summaries": summary("#Summary C tidies up"),
        }
    }
    if rng.random() < 2 / 3:
        out["narration_pass_2"] = {
            "narrations": one_pass(0.6, 0.7),
            "summaries": summary("#Summary C works"),
        }
    out["status"] = "complete"
    return out, actions


def _file_header(split: str, version: str) -> dict:
    if split == "test":  # the test file keeps the v1 header in both releases
        return {
            "version": "1",
            "date": "220216",
            "description": f"NLQ Annotations ({split})",
            "manifest": "s3://ego4d-consortium-sharing/public/v1/full_scale/manifest.csv",
        }
    return {
        "version": "2.0" if version == "v2" else "1",
        "date": "230105",
        "description": f"NLQ Annotations ({split})",
        "metadata": "s3://ego4d-consortium-sharing/public/v2/ego4d.json",
    }


def _make_clip(
    rng, g, spec, split, video_uid, ci, start, end, n_rows, feats, signatures, word_vectors, base, events_out
):
    clip_uid = f"{video_uid}-clip{ci}"
    row0, row1 = clip_row_range(start, end, n_rows)
    n = row1 - row0
    vocab = spec.vocabulary
    if spec.object_zipf > 0 or spec.num_objects != len(OBJECTS):
        weights = [1.0 / (i + 1) ** spec.object_zipf for i in range(len(vocab))]
        objects: list[int] = []
        while len(objects) < spec.events_per_clip:  # distinct objects, drawn by weight
            pick = rng.choices(range(len(vocab)), weights)[0]
            if pick not in objects:
                objects.append(pick)
    else:
        objects = rng.sample(range(len(OBJECTS)), spec.events_per_clip)
    events = []
    for obj in objects:
        length = max(1, round(rng.uniform(*spec.event_seconds) * ROWS_PER_SEC))
        j0 = rng.randrange(0, max(1, n - length))
        j1 = min(n - 1, j0 + length - 1)
        for name, tensor in feats.items():
            tensor[row0 + j0 : row0 + j1 + 1] += spec.signal * signatures[name][obj]
        events.append((obj, j0, j1))
        events_out.append((start + j0 / ROWS_PER_SEC, start + (j1 + 1) / ROWS_PER_SEC, vocab[obj]))
    queries = []
    for obj, j0, j1 in rng.sample(events, min(spec.queries_per_clip, len(events))):
        template, pattern = rng.choice(TEMPLATES)
        text = pattern.format(vocab[obj])
        if split == "test":
            queries.append({"query": text})
            continue
        # clip row j covers [j, j + 1) / 1.875 s from the clip start (see repsuite.nlq.features)
        queries.append(
            {
                "clip_start_sec": round(j0 / ROWS_PER_SEC, 3),
                "clip_end_sec": round((j1 + 1) / ROWS_PER_SEC, 3),
                "video_start_sec": round(start + j0 / ROWS_PER_SEC, 3),
                "video_end_sec": round(start + (j1 + 1) / ROWS_PER_SEC, 3),
                "video_start_frame": int((start + j0 / ROWS_PER_SEC) * 30),
                "video_end_frame": int((start + (j1 + 1) / ROWS_PER_SEC) * 30),
                "template": template,
                "query": text,
                "slot_x": vocab[obj],
                "verb_x": "[verb_not_applicable]",
                "raw_tags": [template, text, vocab[obj], "[verb_not_applicable]"],
            }
        )
    annotation_uid = f"{clip_uid}-ann0"
    if spec.text_source:
        for qi, q in enumerate(queries):
            torch.save(
                _token_features(q["query"], word_vectors, g, vocab),
                base / spec.text_source / f"{annotation_uid}_{qi}.pt",
            )
    ann = {"annotation_uid": annotation_uid, "language_queries": queries}
    if split != "test":
        ann["request_uid"] = f"{clip_uid}-req"
    return {
        "clip_uid": clip_uid,
        "video_start_sec": start,
        "video_end_sec": end,
        "video_start_frame": int(start * 30),
        "video_end_frame": int(end * 30),
        "clip_start_sec": 0,
        "clip_end_sec": end - start,
        "clip_start_frame": 0,
        "clip_end_frame": int((end - start) * 30),
        "source_clip_uid": f"{clip_uid}-source",
        "annotations": [ann],
    }


def _token_features(
    text: str, word_vectors: torch.Tensor, g: torch.Generator, vocab: tuple[str, ...] = OBJECTS
) -> torch.Tensor:
    """(L, D) token states: one vector per word (objects have their own), plus SOT/EOT-like rows."""
    rows = [word_vectors[-1]]
    for word in text.rstrip("?").split():
        idx = vocab.index(word) if word in vocab else len(vocab) + (sum(map(ord, word)) % 14)
        rows.append(word_vectors[idx] + 0.05 * torch.randn(word_vectors.shape[1], generator=g))
    rows.append(word_vectors[-2])
    return torch.stack(rows)  # (L, D)
