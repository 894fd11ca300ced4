"""Frame features from raw videos, row-aligned with the official Ego4D feature files.

``video`` (probe, official row sampling, streamed decoding), ``frame_encoder`` (open_clip / timm image
towers from local weights), ``pipeline`` (the Lightning predict run: dataset, extractor module, writer) and
``run`` (``repsuite nlq extract-video`` as :func:`extract_videos`).
"""

from repsuite.nlq.extract.frame_encoder import ENCODER_KINDS, FrameEncoder, Preprocess
from repsuite.nlq.extract.options import ExtractOptions, OptionsFile
from repsuite.nlq.extract.pipeline import (
    MANIFEST,
    VIDEO_EXTENSIONS,
    ExtractionSummary,
    FeatureWriter,
    FrameFeatureExtractor,
    VideoRowsData,
    VideoRowsDataset,
    plan_videos,
)
from repsuite.nlq.extract.run import extract_videos
from repsuite.nlq.extract.video import (
    SAMPLING_RULES,
    VideoError,
    VideoInfo,
    decode_rows,
    frames_30fps,
    probe_video,
    row_frame_indices,
)

__all__ = [
    "ENCODER_KINDS",
    "MANIFEST",
    "SAMPLING_RULES",
    "VIDEO_EXTENSIONS",
    "ExtractOptions",
    "ExtractionSummary",
    "FeatureWriter",
    "FrameEncoder",
    "FrameFeatureExtractor",
    "OptionsFile",
    "Preprocess",
    "VideoError",
    "VideoInfo",
    "VideoRowsData",
    "VideoRowsDataset",
    "decode_rows",
    "extract_videos",
    "frames_30fps",
    "plan_videos",
    "probe_video",
    "row_frame_indices",
]
