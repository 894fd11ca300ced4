"""Frame-feature extraction as a Lightning ``predict`` run: videos → ``OUT/<video_uid>.pt``, official rows.

Pieces (each usable alone):

* :func:`plan_videos` — the candidate videos: a folder, a list of files, or the videos an NLQ annotation
  file needs (a missing one is a failure with its clips named, not a crash);
* :class:`VideoRowsDataset` — an ``IterableDataset`` that gives each (rank, worker) a fixed share of the
  candidates (by position in the sorted list, so the share never depends on what is already done), skips
  finished videos, probes and decodes the frames the sampling rule names
  (:mod:`repsuite.nlq.extract.video`), and yields chunks of uint8 frames, or a failure record;
* :class:`FrameFeatureExtractor` — the LightningModule: preprocess and encode a chunk on the accelerator;
* :class:`FeatureWriter` — a ``BasePredictionWriter`` that assembles each video's rows and writes the file
  atomically (temporary name + rename) when the last row arrives, then merges every rank's records into
  ``OUT/manifest.json`` and a summary (done / skipped / failed with reasons).

A crash or pre-emption loses only the videos in flight: a re-run skips every file already written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from repsuite.nlq.extract.frame_encoder import FrameEncoder
from repsuite.nlq.extract.video import VideoError, decode_rows, frames_30fps, probe_video, row_frame_indices
from repsuite.nlq.features import official_num_rows, save_feature_file

__all__ = [
    "VIDEO_EXTENSIONS",
    "ExtractionSummary",
    "FeatureWriter",
    "FrameFeatureExtractor",
    "VideoRowsData",
    "VideoRowsDataset",
    "plan_videos",
]

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
MANIFEST = "manifest.json"


def plan_videos(
    videos: list[str] | None = None, annotations: list[str] | None = None, video_dir: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Candidate videos as ``{video_uid: path}`` (sorted by uid) and failures ``{video_uid: reason}``.

    Args:
        videos: video files and/or folders of videos (``<video_uid>.<ext>``; the uid is the file stem).
        annotations: NLQ annotation files; with ``video_dir``, only the videos their clips come from.
        video_dir: where ``<video_uid>.<ext>`` files are looked up for ``annotations``.
    """
    found: dict[str, str] = {}
    failed: dict[str, str] = {}
    for item in videos or []:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix.lower() in VIDEO_EXTENSIONS:
                    found[f.stem] = str(f)
        elif p.is_file():
            found[p.stem] = str(p)
        else:
            failed[p.stem] = f"{p}: no such video file or folder"
    if annotations:
        from repsuite.nlq.annotations import load_nlq_annotations

        if video_dir is None:
            raise ValueError("video_dir is needed with annotations (where <video_uid>.mp4 files are)")
        needed: dict[str, list[str]] = {}
        for path in annotations:
            for clip in load_nlq_annotations(path).clips.values():
                needed.setdefault(clip.video_uid, []).append(clip.clip_uid)
        for uid, clips in needed.items():
            hits = [Path(video_dir) / f"{uid}{ext}" for ext in VIDEO_EXTENSIONS]
            hit = next((h for h in hits if h.is_file()), None)
            if hit is None:
                failed[uid] = f"{Path(video_dir) / uid}.mp4: missing video for annotated clip(s) {clips[:3]}"
            else:
                found[uid] = str(hit)
    return dict(sorted(found.items())), failed


class VideoRowsDataset(IterableDataset):
    """Chunks of sampled frames of this rank's and worker's share of the videos.

    Items are dicts: ``{"video_uid", "path", "start_row", "frames" (n, 3, H, W) uint8, "num_rows", "info"}``
    for data, ``{"video_uid", "path", "status": "skipped" | "failed", "reason"}`` otherwise.
    """

    def __init__(
        self,
        videos: dict[str, str],
        out_dir: str | Path,
        short_side: int,
        sampling: str = "center",
        seed: int = 0,
        chunk: int = 64,
        overwrite: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.items = list(videos.items())
        self.out_dir = Path(out_dir)
        self.short_side, self.sampling, self.seed, self.chunk = short_side, sampling, seed, chunk
        self.overwrite, self.rank, self.world_size = overwrite, rank, world_size

    def share(self) -> list[tuple[str, str]]:
        """This (rank, worker)'s videos: position i goes to rank i % world, then worker (i // world) % W."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        mine = self.items[self.rank :: self.world_size]
        return mine[worker::workers]

    def __iter__(self):
        for uid, path in self.share():
            if not self.overwrite and (self.out_dir / f"{uid}.pt").exists():
                yield {"video_uid": uid, "path": path, "status": "skipped", "reason": "already extracted"}
                continue
            try:
                info = probe_video(path)
                frames = frames_30fps(info)
                rows = official_num_rows(frames)
                if rows == 0:
                    raise VideoError(
                        f"{path}: shorter than one window ({frames} frames at 30 fps < 32): no official rows"
                    )
                indices = row_frame_indices(frames, self.sampling, self.seed, uid)
                meta = {
                    "frames_30fps": frames,
                    "fps": info.fps,
                    "duration": info.duration,
                    "rotation": info.rotation,
                }
                for start, chunk in decode_rows(info, indices, self.short_side, self.chunk):
                    yield {
                        "video_uid": uid,
                        "path": path,
                        "start_row": start,
                        "frames": chunk,
                        "num_rows": rows,
                    }
                yield {"video_uid": uid, "path": path, "status": "decoded", "num_rows": rows, "info": meta}
            except VideoError as err:
                yield {"video_uid": uid, "path": path, "status": "failed", "reason": str(err)}


class VideoRowsData(LightningDataModule):
    """The predict loader of :class:`VideoRowsDataset`, built per rank once the processes exist.

    Args:
        videos: ``{video_uid: path}`` from :func:`plan_videos`.
        out_dir, short_side, sampling, seed, chunk, overwrite: see :class:`VideoRowsDataset`.
        num_workers: decoding processes per rank.
    """

    def __init__(
        self,
        videos: dict[str, str],
        out_dir: str,
        short_side: int,
        sampling: str = "center",
        seed: int = 0,
        chunk: int = 64,
        overwrite: bool = False,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        self.videos, self.out_dir, self.short_side = videos, out_dir, short_side
        self.sampling, self.seed, self.chunk, self.overwrite = sampling, seed, chunk, overwrite
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        """One item per chunk (already a batch), this rank's share of the videos."""
        dataset = VideoRowsDataset(
            self.videos, self.out_dir, self.short_side, self.sampling, self.seed, self.chunk, self.overwrite,
            rank=self.trainer.global_rank, world_size=self.trainer.world_size,
        )  # fmt: skip
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)


class FrameFeatureExtractor(LightningModule):
    """Encodes chunks of frames with a frozen :class:`FrameEncoder` (``predict`` only).

    Args:
        encoder: the frame encoder.
    """

    def __init__(self, encoder: FrameEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def predict_step(self, item: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Data chunks get ``features`` (n, D) float32 on the CPU; status records pass through."""
        if "frames" not in item:
            return item
        feats = self.encoder(item["frames"])  # (n, D)
        out = {k: v for k, v in item.items() if k != "frames"}
        return out | {"features": feats.float().cpu(), "num_frames": int(item["frames"].shape[0])}


@dataclass
class ExtractionSummary:
    """Outcome of an extraction run, merged over ranks."""

    done: dict[str, int] = field(default_factory=dict)  # video_uid -> rows
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # video_uid -> reason
    frames: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """A human summary, failures listed with their reasons."""
        rate = self.frames / self.seconds if self.seconds else 0.0
        out = [
            f"done {len(self.done)}, skipped {len(self.skipped)} (already extracted), "
            f"failed {len(self.failed)}; "
            f"{self.frames} frames encoded in {self.seconds:.1f} s ({rate:.1f} frames/s)"
        ]
        out += [f"  failed {uid}: {why}" for uid, why in sorted(self.failed.items())]
        return out


class FeatureWriter(BasePredictionWriter):
    """Assemble rows per video, write ``OUT/<video_uid>.pt`` atomically, keep the manifest.

    Args:
        out_dir: output folder.
        manifest: run-level facts (encoder, sampling, dtype) written into ``manifest.json``.
        dtype: storage dtype of the features.
        failed: failures found before the run (e.g. annotated videos that are missing).
        num_videos: candidate videos of the whole run (sizes rank 0's progress bar).
    """

    def __init__(
        self,
        out_dir: str | Path,
        manifest: dict,
        dtype: torch.dtype = torch.float32,
        failed: dict | None = None,
        num_videos: int = 0,
    ):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.manifest = manifest
        self.dtype = dtype
        self.pending: dict[str, dict[int, Tensor]] = {}
        self.records: dict[str, dict] = {}
        self.summary = ExtractionSummary(failed=dict(failed or {}))
        self.started = time.perf_counter()
        self.last_report = 0.0
        self.num_videos = num_videos
        self.bar: Any = None

    def on_predict_start(self, trainer, pl_module) -> None:
        """Rank 0 shows a bar over its share of the videos (done/skipped/failed) with frames/s."""
        self.started = self.last_report = time.perf_counter()
        if trainer.global_rank == 0 and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            share = len(range(0, self.num_videos, trainer.world_size))
            self.bar = Progress(
                TextColumn("extract-video (rank 0 of {task.fields[world]})"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("videos · {task.fields[rate]:.1f} frames/s"),
                TimeElapsedColumn(),
            )
            self.bar.add_task("videos", total=share, world=trainer.world_size, rate=0.0)
            self.bar.start()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        """Store a chunk; on the record that closes a video, write its file (all rows present)."""
        uid = prediction["video_uid"]
        status = prediction.get("status")
        if status == "skipped":
            self.summary.skipped.append(uid)
        elif status == "failed":
            self.pending.pop(uid, None)
            self.summary.failed[uid] = prediction["reason"]
            log.warning("extraction failed: %s", prediction["reason"])
        elif status == "decoded":
            self._finish(uid, prediction, trainer.global_rank)
        else:
            self.pending.setdefault(uid, {})[prediction["start_row"]] = prediction["features"]
            self.summary.frames += prediction["num_frames"]
        self._progress(trainer)

    def _finish(self, uid: str, record: dict, rank: int) -> None:
        chunks = self.pending.pop(uid, {})
        feats = torch.cat([chunks[k] for k in sorted(chunks)]) if chunks else torch.empty(0)
        if feats.shape[0] != record["num_rows"]:
            self.summary.failed[uid] = (
                f"{record['path']}: got {feats.shape[0]} rows, expected {record['num_rows']}"
            )
            return
        save_feature_file(feats.to(self.dtype).contiguous(), self.out_dir / f"{uid}.pt")
        self.summary.done[uid] = feats.shape[0]
        self.records[uid] = {
            "rows": int(feats.shape[0]),
            "source": record["path"],
            "rank": rank,
            **record["info"],
        }

    def _progress(self, trainer) -> None:
        now = time.perf_counter()
        s = self.summary
        rate = s.frames / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(
                self.bar.task_ids[0], completed=len(s.done) + len(s.skipped) + len(s.failed), rate=rate
            )
        elif trainer.global_rank == 0 and now - self.last_report > 30:  # no terminal: a line now and then
            self.last_report = now
            print(
                f"[extract-video rank 0] videos done {len(s.done)}, skipped {len(s.skipped)}, failed "
                f"{len(s.failed)}; {rate:.1f} frames/s",
                flush=True,
            )

    def on_predict_end(self, trainer, pl_module) -> None:
        """Each rank saves its records; rank 0 merges them into ``manifest.json`` and the summary."""
        if self.bar is not None:
            self.bar.stop()
        self.summary.seconds = time.perf_counter() - self.started
        part = self.out_dir / f".extract-rank{trainer.global_rank}.json"
        s = self.summary
        part.write_text(
            json.dumps(
                {
                    "records": self.records,
                    "skipped": s.skipped,
                    "failed": s.failed,
                    "frames": s.frames,
                    "seconds": s.seconds,
                }
            )
        )
        trainer.strategy.barrier("extract-video-summary")
        if trainer.global_rank != 0:
            return
        merged = ExtractionSummary()
        records: dict[str, dict] = {}
        for r in range(trainer.world_size):
            p = self.out_dir / f".extract-rank{r}.json"
            data = json.loads(p.read_text())
            p.unlink()
            records.update(data["records"])
            merged.skipped += data["skipped"]
            merged.failed.update(data["failed"])
            merged.frames += data["frames"]
            merged.seconds = max(merged.seconds, data["seconds"])
        merged.done = {uid: rec["rows"] for uid, rec in records.items()}
        mpath = self.out_dir / MANIFEST
        old = json.loads(mpath.read_text()) if mpath.exists() else {}
        videos = {**old.get("videos", {}), **records}
        for uid in merged.skipped:  # finished by an earlier run that stopped before writing its manifest
            if uid not in videos:
                rows = torch.load(
                    self.out_dir / f"{uid}.pt", map_location="cpu", weights_only=True, mmap=True
                )
                videos[uid] = {"rows": int(rows.shape[0]), "note": "written by an interrupted earlier run"}
        failed = {uid: why for uid, why in merged.failed.items() if uid not in videos}
        tmp = mpath.with_name(f".{mpath.name}.tmp")
        tmp.write_text(json.dumps(self.manifest | {"videos": videos, "failed": failed}, indent=1))
        os.replace(tmp, mpath)
        self.summary = merged
