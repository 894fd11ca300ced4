"""Ego4D Natural Language Queries (thesis chapter 2): data, model, official scoring."""

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
from repsuite.nlq.module import NLQModule
from repsuite.nlq.predictor import NLQAnswer, NLQPredictor
from repsuite.nlq.submission import SubmissionWriter, ensemble_submissions

__all__ = [
    "CHALLENGE",
    "SUBMISSION_VERSION",
    "Ego4DNLQDataModule",
    "NLQAnswer",
    "NLQEvalResult",
    "NLQModule",
    "NLQPredictor",
    "NLQRecall",
    "SubmissionError",
    "SubmissionWriter",
    "ensemble_submissions",
    "evaluate_nlq",
    "format_table",
    "temporal_iou",
    "validate_submission",
    "window_iou",
]
