"""``repsuite nlq ...``: Ego4D NLQ tools.

Today: ``eval`` (official scoring) and ``synth`` (synthetic data in the official layout). Submission
writing and ensembling arrive with the NLQ model.
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


def _synth(ns: argparse.Namespace) -> int:
    from repsuite.nlq.synthetic import SyntheticSpec, write_synthetic_ego4d

    spec = SyntheticSpec(
        num_videos={"train": ns.train_videos, "val": ns.val_videos, "test": ns.test_videos},
        clips_per_video=ns.clips_per_video,
        clip_seconds=(ns.min_clip_seconds, ns.max_clip_seconds),
        seed=ns.seed,
    )
    base = write_synthetic_ego4d(ns.root, spec, version=ns.version)
    print(
        f"wrote a synthetic Ego4D NLQ download to {base} (sources: {', '.join(spec.sources)}; "
        f"text features: {spec.text_source})"
    )
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

    sy = sub.add_parser(
        "synth",
        help="write a synthetic NLQ download (official layout, learnable answers) for demos and tests",
        description="Write ROOT/<version>/annotations/nlq_{train,val,test_unannotated}.json and one "
        "<video_uid>.pt per video and feature source, exactly as the official ego4d download lays them out.",
    )
    sy.add_argument("root", metavar="ROOT", help="output folder (the --output_directory of the ego4d CLI)")
    sy.add_argument("--version", default="v2", choices=["v1", "v2"])
    sy.add_argument("--train-videos", type=int, default=24)
    sy.add_argument("--val-videos", type=int, default=6)
    sy.add_argument("--test-videos", type=int, default=4)
    sy.add_argument("--clips-per-video", type=int, default=2)
    sy.add_argument("--min-clip-seconds", type=float, default=60.0)
    sy.add_argument("--max-clip-seconds", type=float, default=120.0)
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=_synth)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``repsuite nlq``; returns the exit code (1 for unreadable or malformed input)."""
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except (SubmissionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
