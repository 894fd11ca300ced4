"""Benchmark the face-swap generator: forward+backward images/s and peak memory at 256 and 512 px, inference.

    python benchmarks/faceswap.py                 # B = 4 at 256 and 512 px (several minutes on 2 CPU cores)
    python benchmarks/faceswap.py --quick         # 64 px, narrow model: checks the script runs
    python benchmarks/faceswap.py --device cuda   # on a GPU

Model: the thesis's generator (configs/faceswap/thesis_512.yaml): Enc-Dec with ID Modulation Blocks, MLP to
W+, CS-SFT into a channel-multiplier-1 StyleGAN2 prior (frozen, as in the recipe), random weights (same cost).

* training = generator forward + backward of a mean loss (the prior frozen, so its weights take no gradient
  but activations still flow), B = 4; time is the median of ``--reps`` after a warm-up, memory as in
  benchmarks/_common.py;
* inference = generator forward without gradients in eval mode (stored noise), B = 4, in images/s.
The identity embedding is a fixed random vector: ArcFace's cost is not part of the generator.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import fmt_bytes, median_seconds, peak_after_warmup, probe_in_subprocess
from repsuite.faceswap.model import FaceSwapGenerator, FaceSwapGeneratorConfig


@dataclass
class Case:
    name: str
    kind: str  # "train" | "infer"
    size: int
    batch: int
    narrow: float


def cases(quick: bool) -> list[Case]:
    sizes, narrow = ((64,), 0.125) if quick else ((256, 512), 1.0)
    return [Case(f"{kind}_{s}", kind, s, 4, narrow) for s in sizes for kind in ("train", "infer")]


def runner(case: Case, device: torch.device):
    torch.manual_seed(0)
    cfg = FaceSwapGeneratorConfig(out_size=case.size, narrow=case.narrow, channel_multiplier=1)
    gen = FaceSwapGenerator(cfg).to(device)
    x = torch.rand(case.batch, 3, case.size, case.size, device=device) * 2 - 1
    ids = torch.randn(case.batch, 512, device=device)
    if case.kind == "train":
        gen.train()

        def run() -> None:
            gen.zero_grad(set_to_none=True)
            gen(x, ids).float().mean().backward()
    else:
        gen.eval()

        @torch.no_grad()
        def run() -> None:
            gen(x, ids)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3, quick 2)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/faceswap.json")
    ap.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args._memory:
        print(peak_after_warmup(runner(Case(**json.loads(args._memory)), device), device))
        return
    reps = args.reps or (2 if args.quick else 3)
    threads = torch.get_num_threads()
    print(
        f"face-swap generator benchmark on {device} ({platform.processor() or platform.machine()}, {threads} "
        f"threads, torch {torch.__version__}); B = 4, prior channel multiplier 1\n"
    )
    print(f"{'case':<14}{'time / batch':>14}{'images/s':>11}{'peak mem':>12}")
    rows = []
    for case in cases(args.quick):
        secs = median_seconds(runner(case, device), device, reps)
        gc.collect()
        if args.no_memory:
            mem = None
        elif device.type == "cuda":
            mem = peak_after_warmup(runner(case, device), device)
        else:
            mem = probe_in_subprocess(__file__, asdict(case), threads)
        ips = case.batch / secs
        print(f"{case.name:<14}{secs * 1e3:>12.0f}ms{ips:>11.2f}{fmt_bytes(mem):>12}", flush=True)
        rows.append({**asdict(case), "seconds": secs, "images_per_s": ips, "peak_bytes": mem})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"device": str(device), "threads": threads, "reps": reps, "rows": rows}, indent=2)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
