"""Narrations as queries (NaQ) on synthetic data: does pre-training on narrations help when NLQ is scarce?

    python benchmarks/nlq_naq.py                          # 3 seeds, 2 at a time (~30 min per seed and core)
    python benchmarks/nlq_naq.py --seeds 0 --quick        # plumbing check

A synthetic Ego4D download in the official layout (``repsuite.nlq.synthetic``) with few NLQ training queries
(24 training videos x 2 clips x 3 questions = 144) but dense narrations of everything in those videos
(``annotations/narration.json``, both passes, ~4% ``#unsure``: the 8 events of each clip, of which 3 are
asked about, and the camera wearer's other actions, all visible in the features), objects drawn from a
long-tailed vocabulary of 120 words (as real NLQ's: many validation questions name objects no training
question does, while the narrations of the training videos name more of them), and a weak event signal so
that the demo model is far from saturated. Then, for each seed (the data stay the same, training differs)
and the same total number of optimizer steps:

* (a) **NLQ only**: ``configs/nlq/demo.yaml`` on ``nlq_train.json`` for ``--steps`` steps;
* (b) **NaQ pre-train + NLQ fine-tune**: ``repsuite nlq naq ROOT -o naq_train.json`` (the EgoClip window
  rule, only narrations inside the split's clips), pre-train on NLQ + NaQ (the plain union, as NaQ's
  ``train_naq.sh``) for ``--pretrain-fraction`` of the steps with a larger batch
  (``--pretrain-batch-size``; NaQ pre-trains with batch 768 and fine-tunes with 32), then fine-tune on NLQ
  from those weights (``--model.init_from``, weights only) at a lower learning rate (``--finetune-lr``)
  for the rest;
* (a') **control**: (b)'s exact schedule (the same steps, batch sizes and learning rates) on NLQ alone, so
  that what (b) gains over (a) can be told apart from what the schedule alone gives (``--no-control``
  skips it).

All arms are scored on the validation split with the official evaluator (final weights, no best-step
selection), next to a random-window baseline on the same queries, and split by whether the question's
object is named by any NLQ training question (``seen``) or only by narrations (or by nothing). The printed
table is what the README reports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.nlq_ablation import METRICS, scores  # the official table values ×100

ROOT = Path(__file__).resolve().parents[1]


def fit(data: Path, out: Path, seed: int, steps: int, extra: list[str]):
    """``repsuite fit`` of the demo config for exactly ``steps`` optimizer steps; returns the CLI object."""
    from repsuite.cli import run_cli

    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the demo config writes outputs/ relative to the working directory
    return run_cli(
        [
            "fit",
            "--config",
            str(ROOT / "configs/nlq/demo.yaml"),
            f"--data.root={data}",
            f"--seed_everything={seed}",
            f"--trainer.max_steps={steps}",
            "--trainer.max_epochs=-1",
            "--trainer.limit_val_batches=0",  # scored once at the end, by the official evaluator
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            *extra,
        ]
    )


def score_val(cli, data: Path, seed: int) -> tuple[dict, dict]:
    """Predict the validation split with the fitted model; official scores and a random-window baseline.

    The official scores get two more entries: R@1 IoU 0.3 on the questions whose object some NLQ training
    question names (``seen R@1 IoU0.3``) and on the others (``unseen R@1 IoU0.3``), the ones only narrations
    can teach.
    """
    from repsuite.nlq.evaluation import evaluate_nlq, ground_truth_index, load_json, random_window_baseline

    gt = load_json(data / "v2/annotations/nlq_val.json")
    train = load_json(data / "v2/annotations/nlq_train.json")
    named = {q["slot_x"] for v in train["videos"] for c in v["clips"] for a in c["annotations"]
             for q in a["language_queries"]}  # fmt: skip
    cli.datamodule.setup("validate")
    batches = cli.trainer.predict(cli.model, dataloaders=cli.datamodule.val_dataloader())
    results = [e for b in batches for e in b]
    sub = {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}
    official = evaluate_nlq(sub, gt)
    chance = evaluate_nlq(random_window_baseline(sub, gt, seed=seed), gt)
    truth = ground_truth_index(gt)
    hits: dict[bool, list[bool]] = {True: [], False: []}
    for e, ious in zip(results, official.per_entry_iou, strict=True):  # the evaluator's IoUs, entry order
        q = truth[(e["clip_uid"], e["annotation_uid"])][e["query_idx"]]
        hits[q["slot_x"] in named].append(ious[0] > 0.3)  # the official hit rule (IoU > t)
    split = {
        f"{name} R@1 IoU0.3": 100.0 * sum(h) / max(1, len(h))
        for name, h in (("seen", hits[True]), ("unseen", hits[False]))
    }
    return scores(official) | split, scores(chance)


def run_seed(
    data: Path,
    naq: Path,
    work: Path,
    seed: int,
    steps: int,
    pretrain: int,
    weights: list[float] | None,
    pretrain_batch_size: int,
    finetune_lr: float,
    control: bool,
    threads: int = 0,
) -> dict:
    """All arms for one seed: ``{"nlq_only": scores, "naq": scores, ["control": scores,] "chance": scores,
    "seconds": ...}``."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    out: dict = {"seconds": {}}
    t0 = time.perf_counter()
    a = fit(data, work / f"seed{seed}/nlq_only", seed, steps, [])
    out["nlq_only"], out["chance"] = score_val(a, data, seed)
    out["seconds"]["nlq_only"] = time.perf_counter() - t0

    def two_step(arm: str, pre_sources: list[str]) -> dict:
        t = time.perf_counter()
        p = fit(data, work / f"seed{seed}/{arm}_pretrain", seed, pretrain,
                [*pre_sources, f"--data.batch_size={pretrain_batch_size}"])  # fmt: skip
        ckpt = Path(p.trainer.checkpoint_callback.last_model_path)
        f = fit(data, work / f"seed{seed}/{arm}_finetune", seed, steps - pretrain,
                [f"--model.init_from={ckpt}", f"--model.lr={finetune_lr}"])  # fmt: skip
        result, _ = score_val(f, data, seed)
        out["seconds"][arm] = time.perf_counter() - t
        return result

    sources = [f"--data.train_files=[{naq}]"]
    if weights:
        sources.append(f"--data.train_weights=[{weights[0]}, {weights[1]}]")
    out["naq"] = two_step("naq", sources)
    if control:
        out["control"] = two_step("control", [])
    return out


def _run_seed_star(args: tuple) -> dict:
    return run_seed(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps of each arm")
    ap.add_argument("--pretrain-fraction", type=float, default=0.75, help="of the steps, pre-training on NaQ")
    ap.add_argument("--pretrain-batch-size", type=int, default=64, help="(b)'s pre-training batch (NLQ: 16)")
    ap.add_argument("--finetune-lr", type=float, default=3e-4, help="(b)'s fine-tune lr (demo: 1e-3)")
    ap.add_argument("--naq-weights", type=float, nargs=2, metavar=("NLQ", "NAQ"),
                    help="pre-training draws each source so (default: the plain union)")  # fmt: skip
    ap.add_argument("--no-control", action="store_true", help="skip (a'), (b)'s schedule on NLQ alone")
    ap.add_argument("--workers", type=int, default=0,
                    help="seeds run at once, a process each (default: up to 2)")  # fmt: skip
    ap.add_argument("--signal", type=float, default=0.4, help="synthetic event strength (demo data: 2.5)")
    ap.add_argument("--events-per-clip", type=int, default=8, help="events per clip (3 of them are asked)")
    ap.add_argument("--objects", type=int, default=120, help="object vocabulary (the demo data: 24)")
    ap.add_argument("--zipf", type=float, default=1.0, help="long tail of the objects (0: uniform)")
    ap.add_argument("--quick", action="store_true", help="tiny download and few steps (plumbing check)")
    ap.add_argument("--work", default="outputs/nlq_naq")
    ap.add_argument("--out", default="benchmarks/results/nlq_naq.json")
    args = ap.parse_args()

    from repsuite.nlq.naq import build_naq
    from repsuite.nlq.synthetic import SyntheticSpec, write_synthetic_ego4d

    work = Path(args.work).resolve()
    out_path = Path(args.out).resolve()
    data = work / "data"
    videos = {"train": 4, "val": 2, "test": 1} if args.quick else {"train": 24, "val": 20, "test": 1}
    steps = 8 if args.quick else args.steps
    pretrain = max(1, round(steps * args.pretrain_fraction))
    pretrain_batch = 4 if args.quick else args.pretrain_batch_size
    spec = SyntheticSpec(
        num_videos=videos,
        signal=args.signal,
        text_source=None,
        events_per_clip=args.events_per_clip,
        num_objects=args.objects,
        object_zipf=args.zipf,
    )
    write_synthetic_ego4d(data, spec)
    naq_file = data / "v2/annotations/naq_train.json"
    naq, counts = build_naq(data, version="v2", split="train")
    naq_file.write_text(json.dumps(naq))
    nlq_queries = sum(
        len(a["language_queries"])
        for v in json.loads((data / "v2/annotations/nlq_train.json").read_text())["videos"]
        for c in v["clips"]
        for a in c["annotations"]
    )
    print(f"synthetic download: {data} (signal {args.signal}, videos {videos}, {nlq_queries} NLQ train "
          f"queries); NaQ: {dict(counts)}", flush=True)  # fmt: skip

    cores = os.cpu_count() or 1
    workers = min(len(args.seeds), args.workers or min(2, cores))
    jobs = [
        (data, naq_file, work, seed, steps, pretrain, args.naq_weights, pretrain_batch, args.finetune_lr,
         not args.no_control, max(1, cores // workers))
        for seed in args.seeds
    ]  # fmt: skip
    if workers > 1:
        import multiprocessing

        # one process per seed (spawned: each sets its own thread count and working directory)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            runs = pool.map(_run_seed_star, jobs, chunksize=1)
    else:
        runs = [run_seed(*job) for job in jobs]
    arms = ["nlq_only", "naq"] + (["control"] if not args.no_control else [])
    for seed, r in zip(args.seeds, runs, strict=True):
        print(f"seed {seed}: R@1 IoU0.3 " + ", ".join(f"{arm} {r[arm]['R@1 IoU0.3']:.2f}" for arm in arms))

    columns = [*METRICS, "seen R@1 IoU0.3", "unseen R@1 IoU0.3"]

    def mean(arm: str) -> dict[str, float]:
        return {m: statistics.fmean(r[arm][m] for r in runs) for m in columns if m in runs[0][arm]}

    table = {arm: mean(arm) for arm in (*arms, "chance")}
    names = {
        "nlq_only": "(a) NLQ only",
        "naq": "(b) NaQ pre-train + NLQ fine-tune",
        "control": "(a') (b)'s schedule, NLQ only",
        "chance": "random windows (same queries)",
    }
    print(f"\nNLQ val, {steps} optimizer steps per arm ((b), (a'): {pretrain} pre-train at batch "
          f"{pretrain_batch} + {steps - pretrain} fine-tune at lr {args.finetune_lr}), mean of seeds "
          f"{args.seeds}")  # fmt: skip
    heads = {"seen R@1 IoU0.3": "seen R@1", "unseen R@1 IoU0.3": "unseen R@1"}
    print(f"{'':<36}" + "".join(f"{heads.get(m, m):>12}" for m in columns))
    for arm, row in table.items():
        print(f"{names[arm]:<36}" + "".join(f"{row[m]:>12.2f}" if m in row else f"{'':>12}" for m in columns))
    for other in [a for a in arms if a != "naq"]:
        gains = [r["naq"]["R@1 IoU0.3"] - r[other]["R@1 IoU0.3"] for r in runs]
        label = "(a)" if other == "nlq_only" else "(a')"
        print(
            f"R@1 IoU0.3 gain of (b) over {label}: {statistics.fmean(gains):+.2f} points (per seed: "
            + ", ".join(f"{g:+.2f}" for g in gains)
            + ")"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"steps": steps, "pretrain_steps": pretrain, "pretrain_batch_size": pretrain_batch,
            "finetune_lr": args.finetune_lr, "naq_weights": args.naq_weights, "seeds": args.seeds,
            "signal": args.signal, "objects": args.objects, "zipf": args.zipf, "videos": videos,
            "nlq_train_queries": nlq_queries, "naq": dict(counts)}  # fmt: skip
    out_path.write_text(json.dumps(meta | {"mean": table, "runs": runs}, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
