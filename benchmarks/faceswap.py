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

Then, per size, inference paths timed side by side (A B B A, ``--reps`` each, same inputs, B = 4 targets of
one source, as when swapping a video or a folder):
* general: ``G(target, id)`` with the ID Modulation Blocks modulating per sample;
* fixed: ``G.fixed_source(id)(target)``, the identity folded into plain convolution weights once (the fold is
  outside the timing: it is done once per source);
* fixed bf16: the same under bf16 autocast with channels-last tensors (``FaceSwapper(precision=
  "bf16-mixed")``; on CPUs with AMX and on GPUs with tensor cores); its largest difference to fp32 is printed;
* fixed compiled: the fixed path in fp32 through ``torch.compile`` with Inductor's freezing, channels-last
  (``FaceSwapper(compile=True)``, ``G.fixed_source(id).compiled()``); the compile (about a minute per size on
  2 CPU cores, once per source) is outside the timing and printed; ``--no-compile`` skips it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import abba_seconds, fmt_bytes, median_seconds, peak_after_warmup, probe_in_subprocess
from repsuite.faceswap.model import FaceSwapGenerator, FaceSwapGeneratorConfig, to_channels_last


@dataclass
class Case:
    name: str
    kind: str  # "train" | "infer"
    size: int
    batch: int
    narrow: float


def inference_paths(size: int, narrow: float, device: torch.device, compiled: bool = False):
    """Runners of the general, fixed-source, fixed-source bf16 (and, with ``compiled``, fixed-source
    compiled) inference paths on the same inputs; the last is None without ``compiled``."""
    torch.manual_seed(0)
    cfg = FaceSwapGeneratorConfig(out_size=size, narrow=narrow, channel_multiplier=1)
    gen = FaceSwapGenerator(cfg).to(device).eval()
    x = torch.rand(4, 3, size, size, device=device) * 2 - 1
    ident = torch.randn(1, 512, device=device)
    with torch.no_grad():
        fixed = gen.fixed_source(ident)
        fixed_cl = to_channels_last(copy.deepcopy(gen)).fixed_source(ident)
        # compiled() converts the generator it shares to channels-last: a copy, so `general` stays NCHW
        fixed_compiled = copy.deepcopy(gen).fixed_source(ident).compiled() if compiled else None
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ids = ident.expand(4, -1)

    @torch.no_grad()
    def general() -> Tensor:
        return gen(x, ids)

    @torch.no_grad()
    def folded() -> Tensor:
        return fixed(x)

    @torch.no_grad()
    def folded_bf16() -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fixed_cl(x_cl)

    @torch.no_grad()
    def folded_compiled() -> Tensor:
        assert fixed_compiled is not None
        return fixed_compiled(x)

    return general, folded, folded_bf16, (folded_compiled if compiled else None)


def compare_inference(
    size: int, narrow: float, device: torch.device, reps: int, compiled: bool = False
) -> dict:
    """Time the inference paths side by side (A B B A against the general path); print and return them."""
    general, folded, folded_bf16, folded_compiled = inference_paths(size, narrow, device, compiled)
    ref = general()
    err_fixed = (folded() - ref).abs().max().item()
    err_bf16 = (folded_bf16().float() - ref).abs().max().item()
    t_gen, t_fixed = abba_seconds(general, folded, device, reps)
    t_gen2, t_bf16 = abba_seconds(general, folded_bf16, device, reps)
    print(
        f"{size:>4} px  general {t_gen * 1e3:7.0f} ms   fixed {t_fixed * 1e3:7.0f} ms "
        f"({t_gen / t_fixed:4.2f}x, max |diff| {err_fixed:.1e})   fixed bf16 {t_bf16 * 1e3:7.0f} ms "
        f"({t_gen2 / t_bf16:4.2f}x, max |diff| {err_bf16:.2f})",
        flush=True,
    )
    record = {"size": size, "general_s": t_gen, "fixed_s": t_fixed, "general_s_2": t_gen2,
              "fixed_bf16_s": t_bf16, "fixed_max_abs_diff": err_fixed,
              "fixed_bf16_max_abs_diff": err_bf16}  # fmt: skip
    if folded_compiled is not None:
        t0 = time.perf_counter()
        err_comp = (folded_compiled() - ref).abs().max().item()  # the first call compiles
        compile_s = time.perf_counter() - t0
        t_fixed2, t_comp = abba_seconds(folded, folded_compiled, device, reps)
        print(
            f"{size:>4} px  fixed {t_fixed2 * 1e3:7.0f} ms   fixed compiled {t_comp * 1e3:7.0f} ms "
            f"({t_fixed2 / t_comp:4.2f}x the fixed path, {t_gen / t_comp:4.2f}x general; max |diff| "
            f"{err_comp:.1e}; compiled in {compile_s:.0f} s)",
            flush=True,
        )
        record |= {"fixed_s_2": t_fixed2, "fixed_compiled_s": t_comp, "fixed_compiled_max_abs_diff": err_comp,
                   "compile_s": compile_s}  # fmt: skip
    return record


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
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled fixed-source path")
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
    print("\ninference paths, B = 4 targets of one source, A B B A (ratio = general / path):")
    narrow = cases(args.quick)[0].narrow
    sizes = sorted({c.size for c in cases(args.quick)})
    paths = [compare_inference(size, narrow, device, reps, not args.no_compile) for size in sizes]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": str(device), "threads": threads, "reps": reps, "rows": rows, "inference_paths": paths}
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
