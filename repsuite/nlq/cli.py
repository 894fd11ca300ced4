"""``repsuite nlq ...``: Ego4D NLQ tools (eval, submit, query, ensemble, extract-text, extract-video, synth).

Each tool is a small function over library code; ``submit`` is a ``repsuite predict`` run (see
:func:`repsuite.nlq.submission.submit_args`).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from repsuite._version import __version__
from repsuite.errors import InputError
from repsuite.nlq.evaluation import evaluate_nlq, format_table, load_json


def _eval(ns: argparse.Namespace) -> int:
    gt, pred = load_json(ns.ground_truth), load_json(ns.predictions)

    def score(entries: Any) -> Any:
        return evaluate_nlq(entries, gt, ns.thresholds, ns.topk, strict=ns.strict, source=str(ns.predictions))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score(pred)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    mode = "strict: missing queries count as misses" if ns.strict else "official"
    print(f"Evaluated: {result.num_evaluated} / {result.num_gt_queries} instances ({mode})")
    if ns.strict and result.num_missing:
        print(f"Missing: {result.num_missing} ground-truth queries had no prediction")
    print(format_table(result))
    if ns.random_baseline:
        from repsuite.nlq.evaluation import random_window_baseline

        print("Random-window baseline (same queries, same window lengths, random places):")
        print(format_table(score(random_window_baseline(pred, gt, seed=0))))
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
        num_objects=ns.objects,
        object_zipf=ns.object_zipf,
        **({} if ns.signal is None else {"signal": ns.signal}),  # the default lives in SyntheticSpec
    )
    base = write_synthetic_ego4d(ns.root, spec, version=ns.version)
    print(
        f"wrote a synthetic Ego4D NLQ download to {base} (sources: {', '.join(spec.sources)}; "
        f"text features: {spec.text_source})"
    )
    return 0


def _extract_text(ns: argparse.Namespace) -> int:
    import torch

    from repsuite.nlq.annotations import load_nlq_annotations
    from repsuite.nlq.clip_text import ClipTextTower, cache_text_features

    try:
        queries = [q for path in ns.annotations for q in load_nlq_annotations(path).queries]
        tower = ClipTextTower(ns.model, ns.checkpoint, random_init=ns.random_init)
        device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
        counts = cache_text_features(
            queries,
            ns.output,
            tower.to(device),
            batch_size=ns.batch_size,
            overwrite=ns.overwrite,
            shard_size=ns.shard_size,
        )
    except ValueError as err:  # annotation, checkpoint or cache-manifest problems, each naming its file
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{ns.output}: features of {counts['written']} queries written, {counts['cached']} already there "
        f"({len(queries)} queries, model {tower.model_name}, dim {tower.width})"
    )
    return 0


def _extract_video(ns: argparse.Namespace) -> int:
    from repsuite.nlq.extract import ExtractOptions, extract_videos

    try:
        return extract_videos(ExtractOptions.from_namespace(ns))
    except (ValueError, FileNotFoundError) as err:  # no videos, bad weights, a folder of another run
        print(f"error: {err}", file=sys.stderr)
        return 1


def _submit(ns: argparse.Namespace, extra: list[str]) -> int:
    from repsuite.cli import run_cli
    from repsuite.nlq.submission import submit_args

    args = submit_args(ns.checkpoint, ns.split, ns.output, ns.accelerator, overrides=extra)
    try:
        with warnings.catch_warnings():  # sys.argv holds this tool's words, already translated into args
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")  # training's
            run_cli(args, save_config_callback=None)  # no config file: the submission is the only output
        return 0
    except SystemExit as exc:  # the CLI's parser has printed why (e.g. an unknown --data option)
        return 1 if exc.code else 0


def _query(ns: argparse.Namespace) -> int:
    from repsuite.nlq.predictor import NLQPredictor

    named = [v.split("=", 1) for v in ns.video if "=" in v and not Path(v).exists()]
    if named and len(named) != len(ns.video):
        raise InputError("--video: give one file, or NAME=FILE for every feature source")
    video: Any = {name: path for name, path in named} if named else ns.video[0]
    if not named and len(ns.video) > 1:
        raise InputError("--video: several files need NAME=FILE each (the model's feature source names)")
    weights = dict(w.split("=", 1) for w in ns.weights or [])
    predictor = NLQPredictor.from_checkpoint(ns.checkpoint, device=ns.device, precision=ns.precision,
                                             weights=weights)  # fmt: skip
    answers = predictor.query(video, ns.question, top_k=ns.top_k, clip=tuple(ns.clip) if ns.clip else None)
    for answer in answers:
        print(answer)
    if ns.json:
        rows = [{"question": a.question, "predicted_times": a.windows, "scores": a.scores} for a in answers]
        Path(ns.json).write_text(json.dumps(rows, indent=1))
    return 0


def _ensemble(ns: argparse.Namespace) -> int:
    from repsuite.nlq.submission import ensemble_submissions

    subs = ((str(path), load_json(path)) for path in ns.predictions)
    merged = ensemble_submissions(subs, top_k=ns.top_k, deduplicate=ns.deduplicate)
    Path(ns.output).write_text(json.dumps(merged))
    print(
        f"merged {len(ns.predictions)} submissions into {len(merged['results'])} queries "
        f"(top {ns.top_k} by score) -> {ns.output}"
    )
    return 0


def _add_eval(sub: Any) -> None:
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
        "--thresholds", type=float, nargs="+", default=[0.3, 0.5], help="IoU thresholds (0.3 0.5)"
    )
    ev.add_argument("--topk", type=int, nargs="+", default=[1, 5], help="K of R@K (default 1 5)")
    strict = "count every ground-truth query (missing = miss) and score duplicates once"
    ev.add_argument("--strict", action="store_true", help=strict)
    ev.add_argument("--json", metavar="OUT.json", help="also write the scores (x100) as JSON")
    baseline = "also score the same windows moved to random places in their clips (chance level)"
    ev.add_argument("--random-baseline", action="store_true", help=baseline)
    ev.set_defaults(func=_eval)


def _naq(ns: argparse.Namespace) -> int:
    from repsuite.nlq.naq import build_naq, merge_annotations

    data, counts = build_naq(ns.root, ns.version, ns.split, ns.egoclip)
    what = f"{counts['kept']} narration queries in {counts['clips']} clips of {counts['videos']} videos"
    if ns.merge_with:
        nlq = load_json(ns.merge_with)
        data = merge_annotations(data, nlq)
        n_nlq = sum(len(a.get("language_queries", [])) for v in nlq["videos"] for c in v["clips"]
                    for a in c.get("annotations", []))  # fmt: skip
        what += f", merged with {n_nlq} queries of {ns.merge_with}"
    Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.output).write_text(json.dumps(data))
    print(f"{what} -> {ns.output}")
    for reason, n in sorted(counts.items()):
        if reason.startswith("dropped"):
            print(f"  {reason}: {n}")
    return 0


def _add_naq(sub: Any) -> None:
    nq = sub.add_parser(
        "naq",
        help="narrations as queries (NaQ): NLQ-format training queries from narration.json",
        description="Turn ROOT/<version>/annotations/narration.json into NLQ-format queries (EgoClip "
        "windows) inside the split's episodic-memory clips; the output reads like nlq_train.json.",
    )
    nq.add_argument("root", metavar="ROOT", help="the ego4d download folder (holds <version>/annotations)")
    nq.add_argument("-o", "--output", required=True, help="OUT.json (the nlq_train.json schema)")
    nq.add_argument("--version", default="v2", choices=["v1", "v2"])
    nq.add_argument("--split", default="train", choices=["train", "val"])
    nq.add_argument("--egoclip", help="EgoVLP's egoclip.csv: take its windows instead of the EgoClip rule")
    nq.add_argument("--merge-with", help="an NLQ annotation file (e.g. nlq_train.json) to merge into OUT")
    nq.set_defaults(func=_naq)


def _add_synth(sub: Any) -> None:
    sy = sub.add_parser(
        "synth",
        help="write a synthetic NLQ download (official layout, learnable answers) for demos and tests",
        description="Write ROOT/<version>/annotations/nlq_{train,val,test_unannotated}.json and one "
        "<video_uid>.pt per video and feature source, exactly as the official ego4d download lays them out.",
    )
    sy.add_argument("root", metavar="ROOT", help="output folder (the --output_directory of the ego4d CLI)")
    sy.add_argument("--version", default="v2", choices=["v1", "v2"])
    for name, kind, default in [("train-videos", int, 24), ("val-videos", int, 6), ("test-videos", int, 4),
                                ("clips-per-video", int, 2), ("min-clip-seconds", float, 60.0),
                                ("max-clip-seconds", float, 120.0)]:  # fmt: skip
        sy.add_argument(f"--{name}", type=kind, default=default)
    signal = "strength of an object event against unit noise (default: SyntheticSpec's); lower is harder"
    sy.add_argument("--signal", type=float, help=signal)
    sy.add_argument("--objects", type=int, default=24, help="object vocabulary size (24 to 120)")
    sy.add_argument("--object-zipf", type=float, default=0.0, help="> 0: long-tailed object frequencies")
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=_synth)


def _add_submit(sub: Any) -> None:
    su = sub.add_parser(
        "submit",
        help="predict a split with a checkpoint and write a challenge submission (scores kept)",
        description="Run `repsuite predict --ckpt_path CKPT` with the data options saved in CKPT and a "
        "SubmissionWriter: predict --split, write PRED.json in the challenge format (an extra `scores` list "
        "per entry, ignored by the official scorer) and, for val, print the official table. Override data "
        "options with --data.<option>=<value>, e.g. --data.root=/other/ego4d.",
    )
    su.add_argument("checkpoint", metavar="CKPT")
    su.add_argument("--split", choices=["val", "test", "train"], default="test")
    su.add_argument("-o", "--output", required=True, metavar="PRED.json")
    su.add_argument("--accelerator", default="auto")
    su.set_defaults(func=_submit)


def _add_query(sub: Any) -> None:
    qu = sub.add_parser(
        "query",
        help="answer questions about one video with a checkpoint (ranked windows in seconds)",
        description="Restore CKPT with the data settings it was trained with (NLQPredictor) and print the "
        "top windows for each --question. --video is a features file (.pt), NAME=FILE for each feature "
        "source of a several-source model, or a video file when every source was made by extract-video.",
    )
    qu.add_argument("checkpoint", metavar="CKPT")
    qu.add_argument("--video", action="append", required=True, metavar="FILE|NAME=FILE")
    qu.add_argument("--question", action="append", required=True, help="repeat for several questions")
    qu.add_argument("--clip", type=float, nargs=2, metavar=("START", "END"), help="answer in this part only")
    qu.add_argument("--top-k", type=int, default=5)
    qu.add_argument("--device", help="default: cuda when available, else cpu")
    qu.add_argument("--precision", choices=["32-true", "bf16-mixed", "16-mixed"])
    weights = (
        "local weights of a frame encoder (source NAME) or of the text tower (text=PATH) at another path"
    )
    qu.add_argument("--weights", action="append", metavar="NAME=PATH", help=weights)
    qu.add_argument("--json", metavar="OUT.json", help="also write the answers as JSON")
    qu.set_defaults(func=_query)


def _add_extract_text(sub: Any) -> None:
    ex = sub.add_parser(
        "extract-text",
        help="CLIP token features of every question: OUT/<annotation_uid>_<query_idx>.pt (author's format)",
        description="Run a frozen open_clip text tower over the (normalised) questions of NLQ annotation "
        "files and write the token states after the final LayerNorm, SOT..EOT, one (L, D) float32 file per "
        "query, plus OUT/manifest.json naming the model and the checkpoint hash. Files already there are "
        "kept (re-runs are cheap); a folder made by other weights is refused.",
    )
    ex.add_argument("annotations", nargs="+", metavar="ANN.json", help="NLQ annotation file(s)")
    ex.add_argument("-o", "--output", required=True, metavar="DIR")
    model = "open_clip model name (ViT-B-16-quickgelu for OpenAI's weights) or a model-config .json"
    ex.add_argument("--model", default="ViT-B-16", help=model)
    ex.add_argument("--checkpoint", help="local weights file of the model (nothing is downloaded)")
    ex.add_argument("--random-init", action="store_true", help="allow random weights (features meaningless)")
    ex.add_argument("--batch-size", type=int, default=256)
    ex.add_argument("--device", help="default: cuda when available, else cpu")
    ex.add_argument("--overwrite", action="store_true", help="recompute every file")
    ex.add_argument(
        "--shard-size",
        type=int,
        default=0,
        metavar="N",
        help="pack about N queries per shard file (OUT/shards/; for NaQ's millions of queries) instead of "
        "one file per query; resumable, the shard count is fixed by the first build",
    )
    ex.set_defaults(func=_extract_text)


def _add_extract_video(sub: Any) -> None:
    from repsuite.nlq.extract.options import OptionsFile

    xv = sub.add_parser(
        "extract-video",
        help="frame features from raw videos: OUT/<video_uid>.pt with the official row count (a predict run)",
        description="Encode one frame per official feature row (window 32 / stride 16 at 30 fps, back-padded "
        "last window) with a frozen open_clip or timm model, so the output concatenates row for row with the "
        "official SlowFast/Omnivore file of the same video. Finished videos are skipped on a re-run; every "
        "file is written atomically; OUT/manifest.json records the encoder, its checkpoint hash, the "
        "sampling rule and rows per video. Exit code 1 when any video failed (the rest are still extracted).",
    )
    add = xv.add_argument
    add("videos", nargs="*", metavar="VIDEO", help="video files and/or folders (<video_uid>.mp4)")
    add("--annotations", nargs="+", metavar="ANN.json", help="extract only the videos these clips need")
    add("--video-dir", help="folder of <video_uid>.mp4 for --annotations")
    add("-o", "--output", required=True, metavar="OUT")
    add("--config", action=OptionsFile, metavar="YAML", help="options from a file (configs/nlq/extract/)")
    add("--encoder", choices=["open_clip", "timm"], default="open_clip")
    add("--model", default="ViT-B-16", help="open_clip or timm model name (or open_clip config .json)")
    add("--checkpoint", help="local weights file of the model (nothing is downloaded)")
    add("--random-init", action="store_true", help="allow random weights (benchmarks/tests only)")
    add("--sampling", choices=["center", "random"], default="center", help="frame per row: centre or random")
    add("--seed", type=int, default=0, help="seed of --sampling random (per video)")
    add("--batch-size", type=int, default=64, help="frames per encoder batch")
    add("--num-workers", type=int, default=2, help="decoding processes per device")
    add("--dtype", choices=["float32", "float16"], default="float32", help="storage dtype")
    add("--accelerator", default="auto")
    add("--devices", default="auto", help="devices per node (int or auto)")
    add("--num-nodes", type=int, default=1)
    add("--strategy", default="auto", help="e.g. ddp for several devices or nodes")
    add("--precision", help="default: bf16-mixed on GPU, 32-true on CPU")
    add("--overwrite", action="store_true", help="redo finished videos")
    xv.set_defaults(func=_extract_video)


def _add_ensemble(sub: Any) -> None:
    en = sub.add_parser(
        "ensemble",
        help="merge submissions by score (thesis §2.5): pool every window, keep the best top-k",
        description="Merge ranked windows of several repsuite submissions per query by their scores, as the "
        "thesis's SlowFast+Omnivore ensemble does, and keep the top K.",
    )
    en.add_argument("predictions", nargs="+", metavar="PRED.json")
    en.add_argument("-o", "--output", required=True, metavar="OUT.json")
    en.add_argument("--top-k", type=int, default=5)
    en.add_argument("--deduplicate", action="store_true", help="keep one copy of identical windows")
    en.set_defaults(func=_ensemble)


def build_parser() -> argparse.ArgumentParser:
    """The ``repsuite nlq`` argument parser (one sub-parser per tool)."""
    parser = argparse.ArgumentParser(prog="repsuite nlq", description="Ego4D Natural Language Queries tools.")
    parser.add_argument("--version", action="version", version=f"repsuite {__version__}")
    sub = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for add in (_add_eval, _add_synth, _add_submit, _add_query, _add_extract_text, _add_extract_video,
                _add_ensemble, _add_naq):  # fmt: skip
        add(sub)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``repsuite nlq``; returns the exit code (1 for unreadable or malformed input)."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.func is not _submit:  # only submit passes words on (to the Lightning CLI)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return ns.func(ns, extra) if ns.func is _submit else ns.func(ns)
    except (InputError, FileNotFoundError) as err:  # bad input: its message names the file and field
        print(f"error: {err}", file=sys.stderr)
        return 1
