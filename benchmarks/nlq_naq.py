"""Narrations as queries (NaQ) on synthetic data: does pre-training on narrations help when NLQ is scarce?

    python benchmarks/nlq_naq.py                      # 3 seeds (~25 min per seed on one CPU core)
    python benchmarks/nlq_naq.py --seeds 0 --quick    # plumbing check

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
  ``train_naq.sh``) for ``--pretrain-fraction`` of the steps, then fine-tune on NLQ from those weights
  (``--model.init_from``, weights only) for the rest.

Both are scored on the validation split with the official evaluator (final weights, no best-step selection),
next to a random-window baseline on the same queries. The printed table is what the README reports.
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
    """Predict the validation split with the fitted model; official scores and a random-window baseline."""
    from repsuite.nlq.evaluation import evaluate_nlq, load_json, random_window_baseline

    gt = load_json(data / "v2/annotations/nlq_val.json")
    cli.datamodule.setup("validate")
    batches = cli.trainer.predict(cli.model, dataloaders=cli.datamodule.val_dataloader())
    sub = {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": [e for b in batches for e in b]}
    chance = evaluate_nlq(random_window_baseline(sub, gt, seed=seed), gt)
    return scores(evaluate_nlq(sub, gt)), scores(chance)


def run_seed(
    data: Path, naq: Path, work: Path, seed: int, steps: int, pretrain: int, weights: list[float] | None
) -> dict:
    """Both arms for one seed: ``{"nlq_only": scores, "naq": scores, "chance": scores, "seconds": ...}``."""
    t0 = time.perf_counter()
    a = fit(data, work / f"seed{seed}/nlq_only", seed, steps, [])
    only, chance = score_val(a, data, seed)
    t1 = time.perf_counter()
    sources = [f"--data.train_files=[{naq}]"]
    if weights:
        sources.append(f"--data.train_weights=[{weights[0]}, {weights[1]}]")
    p = fit(data, work / f"seed{seed}/naq_pretrain", seed, pretrain, sources)
    ckpt = Path(p.trainer.checkpoint_callback.last_model_path)
    f = fit(data, work / f"seed{seed}/naq_finetune", seed, steps - pretrain, [f"--model.init_from={ckpt}"])
    both, _ = score_val(f, data, seed)
    t2 = time.perf_counter()
    return {"nlq_only": only, "naq": both, "chance": chance, "seconds": {"nlq_only": t1 - t0, "naq": t2 - t1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps of each arm")
    ap.add_argument("--pretrain-fraction", type=float, default=0.5, help="of the steps, pre-training on NaQ")
    ap.add_argument("--naq-weights", type=float, nargs=2, metavar=("NLQ", "NAQ"),
                    help="pre-training draws each source so (default: the plain union)")  # fmt: skip
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

    runs = []
    for seed in args.seeds:
        runs.append(run_seed(data, naq_file, work, seed, steps, pretrain, args.naq_weights))
        r = runs[-1]
        print(f"seed {seed}: R@1 IoU0.3 NLQ only {r['nlq_only']['R@1 IoU0.3']:.2f}, NaQ pre-train + NLQ "
              f"fine-tune {r['naq']['R@1 IoU0.3']:.2f}", flush=True)  # fmt: skip

    def mean(arm: str) -> dict[str, float]:
        return {m: statistics.fmean(r[arm][m] for r in runs) for m in METRICS}

    table = {arm: mean(arm) for arm in ("nlq_only", "naq", "chance")}
    names = {
        "nlq_only": "(a) NLQ only",
        "naq": "(b) NaQ pre-train + NLQ fine-tune",
        "chance": "random windows (same queries)",
    }
    print(f"\nNLQ val, {steps} optimizer steps per arm ((b): {pretrain} pre-train + {steps - pretrain} "
          f"fine-tune), mean of seeds {args.seeds}")  # fmt: skip
    print(f"{'':<36}" + "".join(f"{m:>12}" for m in METRICS))
    for arm, row in table.items():
        print(f"{names[arm]:<36}" + "".join(f"{row[m]:>12.2f}" for m in METRICS))
    gains = [r["naq"]["R@1 IoU0.3"] - r["nlq_only"]["R@1 IoU0.3"] for r in runs]
    print(
        f"\nR@1 IoU0.3 gain of (b) over (a): {statistics.fmean(gains):+.2f} points (per seed: "
        + ", ".join(f"{g:+.2f}" for g in gains)
        + ")"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"steps": steps, "pretrain_steps": pretrain, "naq_weights": args.naq_weights, "seeds": args.seeds,
            "signal": args.signal, "objects": args.objects, "zipf": args.zipf, "videos": videos,
            "nlq_train_queries": nlq_queries, "naq": dict(counts)}  # fmt: skip
    out_path.write_text(json.dumps(meta | {"mean": table, "runs": runs}, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
