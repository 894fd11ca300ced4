"""``repsuite nlq ...``: Ego4D NLQ tools.

``eval`` (official scoring), ``submit`` (checkpoint -> challenge submission), ``ensemble`` (merge
submissions by score), ``extract-text`` (CLIP token features of the questions, the author's file format)
and ``synth`` (synthetic data in the official layout).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from repsuite.nlq.evaluation import SubmissionError, evaluate_nlq, format_table, load_json

SYNTH_SIGNAL = 2.5  # keep equal to SyntheticSpec.signal (checked by a test); importing torch here is slow


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
    if ns.random_baseline:
        from repsuite.nlq.evaluation import random_window_baseline

        chance = evaluate_nlq(
            random_window_baseline(pred, gt, seed=0),
            gt,
            ns.thresholds,
            ns.topk,
            strict=ns.strict,
            source=str(ns.predictions),
        )
        print("Random-window baseline (same queries, same window lengths, random places):")
        print(format_table(chance))
    if ns.json:
        Path(ns.json).write_text(json.dumps(result.as_dict(), indent=2))
    return 0


def _synth(ns: argparse.Namespace) -> int:
    from repsuite.nlq.synthetic import SyntheticSpec, write_synthetic_ego4d

    spec = SyntheticSpec(
        num_videos={"train": ns.train_videos, "val": ns.val_videos, "test": ns.test_videos},
        clips_per_video=ns.clips_per_video,
        clip_seconds=(ns.min_clip_seconds, ns.max_clip_seconds),
        signal=ns.signal,
        seed=ns.seed,
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
            queries, ns.output, tower.to(device), batch_size=ns.batch_size, overwrite=ns.overwrite
        )
    except ValueError as err:  # annotation, checkpoint or cache-manifest problems, each naming its file
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{ns.output}: {counts['written']} query feature files written, {counts['cached']} already there "
        f"({len(queries)} queries, model {tower.model_name}, dim {tower.width})"
    )
    return 0


def _extract_video(ns: argparse.Namespace) -> int:
    import torch
    from lightning.pytorch import Trainer

    from repsuite.nlq.extraction import (
        MANIFEST,
        FeatureWriter,
        FrameFeatureExtractor,
        VideoRowsData,
        plan_videos,
    )
    from repsuite.nlq.frame_encoder import FrameEncoder

    out = Path(ns.output)
    try:
        videos, failed = plan_videos(ns.videos, ns.annotations, ns.video_dir)
        if not videos and not failed:
            raise ValueError("no videos given: pass video files/folders, or --annotations with --video-dir")
        encoder = FrameEncoder(ns.encoder, ns.model, ns.checkpoint, random_init=ns.random_init)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "format": "one (N, D) tensor per video, N = official rows (window 32, stride 16 at 30 fps)",
        "encoder": encoder.describe(),
        "sampling": {
            "rule": ns.sampling,
            "seed": ns.seed,
            "window_frames": 32,
            "stride_frames": 16,
            "fps": 30,
        },
        "dtype": ns.dtype,
    }
    mpath = out / MANIFEST
    if mpath.exists() and not ns.overwrite:
        old = json.loads(mpath.read_text())
        keys = [
            ("encoder", "checkpoint_sha256"),
            ("encoder", "model"),
            ("encoder", "kind"),
            ("sampling",),
            ("dtype",),
        ]
        for path in keys:
            a, b = old, run
            for k in path:
                a, b = (a or {}).get(k), (b or {}).get(k)
            if a != b:
                print(
                    f"error: {mpath}: features there were made with {'.'.join(path)} = {a!r}, this run uses "
                    f"{b!r}; "
                    "use another output folder or --overwrite",
                    file=sys.stderr,
                )
                return 1
    precision = ns.precision or (
        "bf16-mixed" if torch.cuda.is_available() and ns.accelerator != "cpu" else "32-true"
    )
    writer = FeatureWriter(out, run, getattr(torch, ns.dtype), failed, num_videos=len(videos))
    trainer = Trainer(
        accelerator=ns.accelerator,
        devices=ns.devices,
        num_nodes=ns.num_nodes,
        strategy=ns.strategy,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[writer],
    )
    data = VideoRowsData(
        videos, str(out), encoder.preprocess.resize_to, ns.sampling, ns.seed, ns.batch_size, ns.overwrite,
        ns.num_workers,
    )  # fmt: skip
    trainer.predict(FrameFeatureExtractor(encoder), datamodule=data, return_predictions=False)
    if trainer.global_rank != 0:
        return 0
    for line in writer.summary.lines():
        print(line)
    print(f"features: {out} (manifest: {mpath})")
    return 1 if writer.summary.failed else 0


def load_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``--config FILE`` (YAML with option names as keys) sets defaults that flags on the line override."""
    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        dests = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - dests)
        if unknown:
            parser.error(f"{known.config}: unknown option(s) {unknown}; known: {sorted(dests - {'help'})}")
        parser.set_defaults(**values)


def _parse_overrides(extra: list[str]) -> dict[str, object]:
    """``--data.key=value`` / ``--data.key value`` words -> {key: YAML-parsed value}."""
    import yaml

    out: dict[str, object] = {}
    i = 0
    while i < len(extra):
        word = extra[i]
        if not word.startswith("--data."):
            raise SubmissionError(
                f"unrecognized argument {word!r} (only --data.<option> overrides are accepted)"
            )
        key, sep, value = word[len("--data.") :].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise SubmissionError(f"{word}: missing value")
            value, i = extra[i + 1], i + 1
        out[key] = yaml.safe_load(value)
        i += 1
    return out


def _submit(ns: argparse.Namespace, extra: list[str]) -> int:
    import inspect

    import torch
    from lightning.pytorch import Trainer

    from repsuite.nlq.datamodule import Ego4DNLQDataModule
    from repsuite.nlq.evaluation import CHALLENGE, SUBMISSION_VERSION, validate_submission
    from repsuite.nlq.module import NLQModule

    ckpt = torch.load(ns.checkpoint, map_location="cpu", weights_only=True)
    data_args = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if not data_args:
        raise SubmissionError(
            f"{ns.checkpoint}: no datamodule_hyper_parameters; was it trained with Ego4DNLQDataModule?"
        )
    overrides = _parse_overrides(extra)
    valid = set(inspect.signature(Ego4DNLQDataModule.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise SubmissionError(f"unknown data option(s) {unknown}; valid: {sorted(valid)}")
    data_args.update(overrides)
    data_args["predict_split"] = ns.split
    dm = Ego4DNLQDataModule(**{k: v for k, v in data_args.items() if k in valid})
    model = NLQModule.load_from_checkpoint(ns.checkpoint, map_location="cpu", weights_only=True)
    trainer = Trainer(
        accelerator=ns.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batches = trainer.predict(model, datamodule=dm)
    results = [entry for batch in batches for entry in batch]
    submission = {"version": SUBMISSION_VERSION, "challenge": CHALLENGE, "results": results}
    validate_submission(
        submission, max_windows=model.hparams.top_k, require_ordered=True, source=str(ns.output)
    )
    Path(ns.output).write_text(json.dumps(submission))
    print(f"wrote {len(results)} predictions for split '{ns.split}' to {ns.output}")
    gt_path = dm.base / "annotations" / f"nlq_{ns.split}.json"
    if ns.split != "test" and gt_path.exists():
        result = evaluate_nlq(submission, load_json(gt_path), source=str(ns.output))
        print(f"Evaluated: {result.num_evaluated} / {result.num_gt_queries} instances (official)")
        print(format_table(result))
    return 0


def _ensemble(ns: argparse.Namespace) -> int:
    from repsuite.nlq.evaluation import CHALLENGE, SUBMISSION_VERSION, validate_submission

    pooled: dict[tuple, list[tuple[float, list[float]]]] = {}
    order: list[tuple] = []
    for path in ns.predictions:
        sub = load_json(path)
        for i, entry in enumerate(validate_submission(sub, source=str(path))):
            scores = entry.get("scores")
            if not isinstance(scores, list) or len(scores) != len(entry["predicted_times"]):
                raise SubmissionError(
                    f"{path}: results[{i}] has no `scores` list matching `predicted_times`; ensembling "
                    "needs the scores repsuite writes next to each window"
                )
            key = (entry["clip_uid"], entry["annotation_uid"], entry["query_idx"])
            if key not in pooled:
                pooled[key] = []
                order.append(key)
            pooled[key].extend(zip(scores, entry["predicted_times"], strict=True))
    results = []
    for key in order:
        ranked = sorted(pooled[key], key=lambda c: -c[0])
        if ns.deduplicate:
            seen, unique = set(), []
            for score, window in ranked:
                if tuple(window) not in seen:
                    seen.add(tuple(window))
                    unique.append((score, window))
            ranked = unique
        ranked = ranked[: ns.top_k]
        results.append(
            {
                "clip_uid": key[0],
                "annotation_uid": key[1],
                "query_idx": key[2],
                "predicted_times": [w for _, w in ranked],
                "scores": [s for s, _ in ranked],
            }
        )
    Path(ns.output).write_text(
        json.dumps({"version": SUBMISSION_VERSION, "challenge": CHALLENGE, "results": results})
    )
    print(
        f"merged {len(ns.predictions)} submissions into {len(results)} queries "
        f"(top {ns.top_k} by score) -> {ns.output}"
    )
    return 0


def extract_video_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``extract-video`` sub-parser of :func:`build_parser`'s parser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["extract-video"]


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
    ev.add_argument(
        "--random-baseline",
        action="store_true",
        help="also score the same windows moved to random places in their clips (chance level)",
    )
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
    sy.add_argument(
        "--signal",
        type=float,
        default=SYNTH_SIGNAL,
        help=f"strength of an object event against unit background noise (default {SYNTH_SIGNAL}); "
        "lower is harder",
    )
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=_synth)

    su = sub.add_parser(
        "submit",
        help="predict a split with a checkpoint and write a challenge submission (scores kept)",
        description="Load CKPT (NLQModule) with the data options saved in it, predict --split, write "
        "PRED.json in the challenge format (an extra `scores` list per entry, ignored by the official "
        "scorer) and, for val, print the official table. Override data options with --data.<option>=<value>, "
        "e.g. --data.root=/other/ego4d.",
    )
    su.add_argument("checkpoint", metavar="CKPT")
    su.add_argument("--split", choices=["val", "test", "train"], default="test")
    su.add_argument("-o", "--output", required=True, metavar="PRED.json")
    su.add_argument("--accelerator", default="auto")
    su.set_defaults(func=_submit, wants_extra=True)

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
    ex.add_argument(
        "--model",
        default="ViT-B-16",
        help="open_clip model name (ViT-B-16-quickgelu for OpenAI's weights) or a model-config .json",
    )
    ex.add_argument("--checkpoint", help="local weights file of the model (nothing is downloaded)")
    ex.add_argument(
        "--random-init",
        action="store_true",
        help="allow random weights (plumbing tests; features meaningless)",
    )
    ex.add_argument("--batch-size", type=int, default=256)
    ex.add_argument("--device", help="default: cuda when available, else cpu")
    ex.add_argument("--overwrite", action="store_true", help="recompute every file")
    ex.set_defaults(func=_extract_text)

    xv = sub.add_parser(
        "extract-video",
        help="frame features from raw videos: OUT/<video_uid>.pt with the official row count (a predict run)",
        description="Encode one frame per official feature row (window 32 / stride 16 at 30 fps, back-padded "
        "last window) with a frozen open_clip or timm model, so the output concatenates row for row with the "
        "official SlowFast/Omnivore file of the same video. Finished videos are skipped on a re-run; every "
        "file is written atomically; OUT/manifest.json records the encoder, its checkpoint hash, the "
        "sampling rule and rows per video. Exit code 1 when any video failed (the rest are still extracted).",
    )
    xv.add_argument("videos", nargs="*", metavar="VIDEO", help="video files and/or folders (<video_uid>.mp4)")
    xv.add_argument(
        "--annotations", nargs="+", metavar="ANN.json", help="extract only the videos these clips need"
    )
    xv.add_argument("--video-dir", help="folder of <video_uid>.mp4 for --annotations")
    xv.add_argument("-o", "--output", required=True, metavar="OUT")
    xv.add_argument(
        "--config", metavar="YAML", help="option defaults from a file (configs/nlq/extract/*.yaml)"
    )
    xv.add_argument("--encoder", choices=["open_clip", "timm"], default="open_clip")
    xv.add_argument(
        "--model", default="ViT-B-16", help="open_clip or timm model name (or open_clip config .json)"
    )
    xv.add_argument("--checkpoint", help="local weights file of the model (nothing is downloaded)")
    xv.add_argument("--random-init", action="store_true", help="allow random weights (benchmarks/tests only)")
    xv.add_argument(
        "--sampling",
        choices=["center", "random"],
        default="center",
        help="frame per row: window centre or random",
    )
    xv.add_argument("--seed", type=int, default=0, help="seed of --sampling random (per video)")
    xv.add_argument("--batch-size", type=int, default=64, help="frames per encoder batch")
    xv.add_argument("--num-workers", type=int, default=2, help="decoding processes per device")
    xv.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="storage dtype")
    xv.add_argument("--accelerator", default="auto")
    xv.add_argument("--devices", default="auto", help="devices per node (int or auto)")
    xv.add_argument("--num-nodes", type=int, default=1)
    xv.add_argument("--strategy", default="auto", help="e.g. ddp for several devices or nodes")
    xv.add_argument("--precision", help="default: bf16-mixed on GPU, 32-true on CPU")
    xv.add_argument("--overwrite", action="store_true", help="redo finished videos")
    xv.set_defaults(func=_extract_video)

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
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``repsuite nlq``; returns the exit code (1 for unreadable or malformed input)."""
    parser = build_parser()
    if argv and argv[0] == "extract-video":
        load_config_defaults(extract_video_parser(parser), argv[1:])
    ns, extra = parser.parse_known_args(argv)
    if extra and not getattr(ns, "wants_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return ns.func(ns, extra) if getattr(ns, "wants_extra", False) else ns.func(ns)
    except (SubmissionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
