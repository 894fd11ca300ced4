"""``repsuite nlq ...``: Ego4D NLQ tools.

Today: ``eval`` (official scoring). Submission writing and ensembling arrive with the NLQ model.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from repsuite.nlq.evaluation import SubmissionError, evaluate_nlq, format_table, load_json


def _eval(ns: argparse.Namespace) -> int:
    gt = load_json(ns.ground_truth)
    pred = load_json(ns.predictions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_nlq(pred, gt, ns.thresholds, ns.topk, strict=ns.strict, source=str(ns.predictions))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    mode = "strict: missing queries count as misses" if ns.strict else "official"
    print(f"Evaluated: {result.num_evaluated} / {result.num_gt_queries} instances ({mode})")
    if ns.strict and result.num_missing:
        print(f"Missing: {result.num_missing} ground-truth queries had no prediction")
    print(format_table(result))
    if ns.json:
        Path(ns.json).write_text(json.dumps(result.as_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``repsuite nlq`` argument parser (one sub-parser per tool)."""
    parser = argparse.ArgumentParser(prog="repsuite nlq", description="Ego4D Natural Language Queries tools.")
    sub = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    ev = sub.add_parser(
        "eval",
        help="score a submission exactly like the challenge server",
        description="Score PRED.json against GT.json with the official Ego4D NLQ semantics: IoU strictly "
        "greater than the threshold, windows in submitted order, recall averaged over the submitted entries, "
        "mIoU of the first window.",
    )
    ev.add_argument("ground_truth", metavar="GT.json", help="NLQ annotation file (nlq_val.json, v1 or v2)")
    ev.add_argument("predictions", metavar="PRED.json", help="submission file")
    ev.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.3, 0.5], help="IoU thresholds (default 0.3 0.5)"
    )
    ev.add_argument("--topk", type=int, nargs="+", default=[1, 5], help="K of R@K (default 1 5)")
    ev.add_argument(
        "--strict",
        action="store_true",
        help="count every ground-truth query (missing = miss) and score duplicates once",
    )
    ev.add_argument("--json", metavar="OUT.json", help="also write the scores (x100) as JSON")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``repsuite nlq``; returns the exit code (1 for unreadable or malformed input)."""
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except (SubmissionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
