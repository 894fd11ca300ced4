"""Ego4D Natural Language Queries (thesis chapter 2): data, official scoring (the model comes next)."""

from repsuite.nlq.datamodule import Ego4DNLQDataModule
from repsuite.nlq.evaluation import (
    CHALLENGE,
    SUBMISSION_VERSION,
    NLQEvalResult,
    SubmissionError,
    evaluate_nlq,
    format_table,
    temporal_iou,
    validate_submission,
)
from repsuite.nlq.metrics import NLQRecall, window_iou

__all__ = [
    "CHALLENGE",
    "SUBMISSION_VERSION",
    "Ego4DNLQDataModule",
    "NLQEvalResult",
    "NLQRecall",
    "SubmissionError",
    "evaluate_nlq",
    "format_table",
    "temporal_iou",
    "validate_submission",
    "window_iou",
]
