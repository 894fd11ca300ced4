"""``repsuite nlq extract-video`` as a function: plan the videos, check the output folder, run ``predict``.

The steps are separate so each reads on its own: :func:`run_manifest` (what the output folder records
about this run), :func:`check_manifest` (a folder made with other settings is refused),
:func:`extraction_trainer` (one Lightning predict run, every device and node) and :func:`extract_videos`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repsuite.nlq.extract.frame_encoder import FrameEncoder
from repsuite.nlq.extract.options import ExtractOptions

__all__ = ["MANIFEST_KEYS", "check_manifest", "extract_videos", "extraction_trainer", "run_manifest"]

#: Manifest fields that must match for a re-run to add files to an existing output folder.
MANIFEST_KEYS = (
    ("encoder", "checkpoint_sha256"),
    ("encoder", "model"),
    ("encoder", "kind"),
    ("sampling",),
    ("dtype",),
)


def run_manifest(opts: ExtractOptions, encoder: FrameEncoder) -> dict[str, Any]:
    """The run-level facts ``manifest.json`` records: file format, encoder, frame sampling, dtype."""
    return {
        "format": "one (N, D) tensor per video, N = official rows (window 32, stride 16 at 30 fps)",
        "encoder": encoder.describe(),
        "sampling": {
            "rule": opts.sampling,
            "seed": opts.seed,
            "window_frames": 32,
            "stride_frames": 16,
            "fps": 30,
        },
        "dtype": opts.dtype,
    }


def check_manifest(path: Path, run: dict[str, Any]) -> None:
    """Refuse to add files to a folder whose ``manifest.json`` names another encoder, sampling or dtype.

    Raises:
        ValueError: naming the manifest, the field and both values.
    """
    old = json.loads(path.read_text())
    for key in MANIFEST_KEYS:
        a, b = old, run
        for k in key:
            a, b = (a or {}).get(k), (b or {}).get(k)
        if a != b:
            raise ValueError(
                f"{path}: features there were made with {'.'.join(key)} = {a!r}, this run uses {b!r}; "
                "use another output folder or --overwrite"
            )


def extraction_trainer(opts: ExtractOptions, writer: Any) -> Any:
    """A Trainer for the predict run: no logger or checkpoints, bf16 on GPUs unless told otherwise."""
    import torch
    from lightning.pytorch import Trainer

    on_gpu = torch.cuda.is_available() and opts.accelerator != "cpu"
    return Trainer(
        accelerator=opts.accelerator,
        devices=opts.devices,
        num_nodes=opts.num_nodes,
        strategy=opts.strategy,
        precision=opts.precision or ("bf16-mixed" if on_gpu else "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # VideoRowsDataset shares the videos out by rank itself
        callbacks=[writer],
    )


def extract_videos(opts: ExtractOptions) -> int:
    """Extract every planned video into ``opts.output``; returns 1 when any video failed, else 0.

    Raises:
        ValueError, FileNotFoundError: no videos, a bad checkpoint, or an output folder of another run.
    """
    import torch

    from repsuite.nlq.extract.pipeline import (
        MANIFEST,
        FeatureWriter,
        FrameFeatureExtractor,
        VideoRowsData,
        plan_videos,
    )

    out = Path(opts.output)
    videos, failed = plan_videos(opts.videos, opts.annotations, opts.video_dir)
    if not videos and not failed:
        raise ValueError("no videos given: pass video files/folders, or --annotations with --video-dir")
    encoder = FrameEncoder(opts.encoder, opts.model, opts.checkpoint, random_init=opts.random_init)
    out.mkdir(parents=True, exist_ok=True)
    run = run_manifest(opts, encoder)
    if (out / MANIFEST).exists() and not opts.overwrite:
        check_manifest(out / MANIFEST, run)
    writer = FeatureWriter(out, run, getattr(torch, opts.dtype), failed, num_videos=len(videos))
    trainer = extraction_trainer(opts, writer)
    data = VideoRowsData(
        videos, str(out), encoder.preprocess.resize_to, opts.sampling, opts.seed, opts.batch_size,
        opts.overwrite, opts.num_workers,
    )  # fmt: skip
    trainer.predict(FrameFeatureExtractor(encoder), datamodule=data, return_predictions=False)
    if trainer.global_rank != 0:
        return 0
    for line in writer.summary.lines():
        print(line)
    print(f"features: {out} (manifest: {out / MANIFEST})")
    return 1 if writer.summary.failed else 0
