"""Benchmark the NLQ model: training steps/s and peak memory, cross-attention vs the self-attention variant,
and inference latency per query, measured side by side in one run.

    python benchmarks/nlq.py                  # thesis shapes (about 5 minutes on 2 CPU cores)
    python benchmarks/nlq.py --quick          # small shapes, checks the script runs
    python benchmarks/nlq.py --device cuda    # on a GPU

Model: the thesis recipe (configs/nlq/slowfast_clip.yaml): hidden 256, 8 heads, FFN 1024, T = 3, span
encoder 4 blocks, video input 2304 + 512 + 2 = 2818-d (SlowFast ‖ CLIP ‖ position), text 512-d CLIP tokens.

* training step = forward at one K drawn from {2..6} + every loss term + backward + AdamW step, on a batch
  of 32 clips × 600 bins with 32 text tokens (the thesis's batch and ``max_video_len``); time is the median
  of ``--reps`` steps after warm-up, peak memory is measured as in benchmarks/_common.py;
* inference = one query (B = 1), model in eval mode without gradients, all five scales K = 2..6 run and
  their top-5 windows pooled (the author's procedure), windows decoded to seconds. Two lengths: a 600-bin
  clip, and an hour of video at 1.875 rows/s (6,750 rows) fed unpooled to a model built with
  ``max_video_len=6750`` (the joint start×end matrix alone is 6,750² probabilities);
* the hour-long query again with the former decoder (``decoder="dense"``: the whole start × end matrix,
  ``repsuite.nlq.decoding.joint_topk_dense``) next to today's (only the starts that can hold a top-k pair,
  memory linear in L), and the two decoders alone on that query's logits;
* the hour-long query under bf16 autocast (``NLQPredictor(precision="bf16-mixed")``);
* the training step under bf16 autocast (``--trainer.precision bf16-mixed``; CPUs with AMX and GPUs run
  bf16 matmuls several times faster), and each step's counted FLOPs against the measured matmul peak;
* the training step with the network compiled (``NLQModule(compile=True)``; every K compiled before timing);
* the training step again with the former dropout (``F.dropout``'s per-element ``bernoulli_`` and SDPA's own
  attention dropout) next to today's (:func:`repsuite.ops.dropout`, whose CPU mask costs a fraction).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import abba_seconds, fmt_bytes, median_seconds, peak_after_warmup, probe_in_subprocess
from repsuite.nlq import NLQModule
from repsuite.nlq.data import NLQSample, collate_nlq

VIDEO_DIM, TEXT_DIM = 2304 + 512 + 2, 512


@dataclass
class Case:
    name: str
    kind: str  # "train" | "infer"
    attention: str
    batch: int
    video_len: int
    text_len: int
    decoder: str = "pruned"  # "dense": the former L × L decoder, for the before / after comparison
    dropout: str = "repsuite"  # "torch": the former F.dropout / SDPA-internal dropout, for before / after
    blocked: bool = True  # False: the former unblocked attention-with-dropout (whole score tensors)
    precision: str = "32"  # "bf16": forward and losses under bf16 autocast (the Trainer's bf16-mixed)
    compile: bool = False  # the network's forward through torch.compile (NLQModule(compile=True))
    inference_scales: tuple[int, ...] | None = None  # K values pooled at inference (None: all five)
    scales: tuple[int, ...] | None = None  # K values drawn in training (None: all five)


def cases(quick: bool, compiled: bool = True) -> list[Case]:
    b, lv, lt, long = (4, 128, 16, 1024) if quick else (32, 600, 32, 6750)
    out = [Case(f"train_{a}", "train", a, b, lv, lt) for a in ("cross", "self")]
    if compiled:  # --quick compiles one K (each K is its own graph: minutes per K to compile on a CPU)
        k = (4,) if quick else None
        out += [Case("train_cross_compiled", "train", "cross", b, lv, lt, compile=True, scales=k)]
    out += [Case("train_cross_torchdropout", "train", "cross", b, lv, lt, dropout="torch")]
    out += [Case("train_cross_unblocked", "train", "cross", b, lv, lt, blocked=False)]
    out += [Case("train_cross_bf16", "train", "cross", b, lv, lt, precision="bf16")]
    for length, tag in ((lv, f"{lv}"), (long, f"{long}")):
        out += [Case(f"infer{tag}_{a}", "infer", a, 1, length, lt) for a in ("cross", "self")]
    out += [Case(f"infer{long}_cross_bf16", "infer", "cross", 1, long, lt, precision="bf16")]
    one = (4,)  # a single K at inference (NLQModule(inference_scales=[4])): the latency floor per scale
    out += [Case(f"infer{long}_cross_1scale", "infer", "cross", 1, long, lt, inference_scales=one)]
    out += [Case(f"infer{long}_cross_1scale_bf16", "infer", "cross", 1, long, lt, precision="bf16",
                 inference_scales=one)]  # fmt: skip
    out += [Case(f"infer{long}_cross_dense", "infer", "cross", 1, long, lt, "dense")]
    out += [Case(f"decode{long}_{d}", "decode", "cross", 1, long, lt, d) for d in ("pruned", "dense")]
    return out


def build(case: Case, device: torch.device) -> tuple[NLQModule, dict, torch.optim.Optimizer | None]:
    """The thesis-sized module and a collated random batch at the case's shape, on ``device``."""
    torch.manual_seed(0)
    module = NLQModule(
        video_dim=VIDEO_DIM,
        text_dim=TEXT_DIM,
        attention=case.attention,
        max_video_len=max(600, case.video_len),
        inference_scales=tuple(case.inference_scales) if case.inference_scales else None,
        **({"scales": tuple(case.scales)} if case.scales else {}),
    ).to(device)
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(case.batch):
        s = int(torch.randint(0, case.video_len - 20, (), generator=g))
        e = s + int(torch.randint(0, 20, (), generator=g))
        dur = case.video_len / 1.875
        samples.append(
            NLQSample(
                torch.randn(case.video_len, VIDEO_DIM, generator=g),
                torch.randn(case.text_len, TEXT_DIM, generator=g),
                s,
                e,
                (s / 1.875, (e + 1) / 1.875),
                dur,
                i,
                (f"clip{i}", f"ann{i}", 0),
            )
        )
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_nlq(samples).items()}
    if case.kind == "train":
        module.train()
        return module, batch, module.configure_optimizers()
    module.eval()
    return module, batch, None


@contextmanager
def former_dropout(enabled: bool) -> Iterator[None]:
    """With ``enabled``, the former dropout: ``F.dropout`` and SDPA's own attention dropout (bernoulli_)."""
    if not enabled:
        yield
        return
    import repsuite.ops.attention as attention
    import repsuite.ops.drop as dropout

    saved = dropout.dropout, attention._fast
    dropout.dropout = dropout.dropout_reference
    attention._fast = lambda q, k, v, mask, p: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=p
    )
    try:
        yield
    finally:
        dropout.dropout, attention._fast = saved


@contextmanager
def unblocked_attention(enabled: bool) -> Iterator[None]:
    """With ``enabled``, the former CPU attention with dropout: the whole (B, H, Lq, Lk) scores per op."""
    if not enabled:
        yield
        return
    import repsuite.ops.attention as attention
    import repsuite.ops.drop as dropout

    saved = attention.dropout_attention
    attention.dropout_attention = lambda q, k, v, mask, p: attention._explicit(
        q, k, v, mask, p, dropout.dropout
    )
    try:
        yield
    finally:
        attention.dropout_attention = saved


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Measured dense matmul throughput (FLOP/s) of an n × n by n × n product: the machine's peak."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    secs = median_seconds(lambda: torch.mm(a, b), device, reps)
    return 2 * n**3 / secs


def step_flops(case: Case, device: torch.device) -> int:
    """FLOPs of one training step at a fixed K = 4 (forward + backward), counted by torch's FlopCounterMode.

    Matmuls, convolutions and attention are counted (the model's useful work: no recomputation);
    elementwise work is not (it is what keeps a step below the matmul peak). The timed steps draw K
    from {2..6}, whose mean cost is K = 4's.
    """
    from torch.utils.flop_counter import FlopCounterMode

    module, batch, _ = build(case, device)
    # counted on the unblocked attention: the blocked kernel's backward recomputes the scores (not useful
    # work) and accumulates dK / dV with in-place baddbmm_, which the counter does not see
    with FlopCounterMode(display=False) as counter, unblocked_attention(True):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16"):
            terms = module.criterion(module._forward(batch, 4), batch)
        terms["loss"].backward()
    return counter.get_total_flops()


def runner(case: Case, device: torch.device):
    module, batch, opt = build(case, device)
    if case.kind == "train":
        scales = list(module.hparams.scales)
        draws = torch.Generator().manual_seed(1)  # every training case sees the same sequence of K

        def run() -> None:
            k = scales[int(torch.randint(len(scales), (), generator=draws))]
            with former_dropout(case.dropout == "torch"), unblocked_attention(not case.blocked):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16"):
                    terms = module.criterion(module._forward(batch, k), batch)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 0.1)
            opt.step()

        if case.compile:  # compile every K's graphs before timing (untimed: minutes on a CPU)
            module.model.compile()
            for k in scales:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16"):
                    module.criterion(module._forward(batch, k), batch)["loss"].backward()
            opt.zero_grad(set_to_none=True)
        return run
    import repsuite.nlq.module as nlq_module
    from repsuite.nlq.decoding import joint_topk, joint_topk_dense

    decoder = joint_topk_dense if case.decoder == "dense" else joint_topk
    if case.kind == "decode":  # the decoder alone, on logits of the case's length (20 pairs per scale)
        g = torch.Generator().manual_seed(1)
        s, e = (torch.randn(1, case.video_len, generator=g).to(device) * 2 for _ in range(2))
        pad = torch.zeros(1, case.video_len, dtype=torch.bool, device=device)
        return lambda: decoder(s, e, pad, 20)

    @torch.no_grad()
    def run() -> None:
        nlq_module.joint_topk = decoder  # the module's decoder for this case
        try:  # bf16: as NLQPredictor(precision="bf16-mixed")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16"):
                module.predict_windows(batch)
        finally:
            nlq_module.joint_topk = joint_topk

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (checks the script runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, quick 2)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile training case")
    ap.add_argument("--out", default="benchmarks/results/nlq.json")
    ap.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args._memory:  # child process: one peak-memory probe
        print(peak_after_warmup(runner(Case(**json.loads(args._memory)), device), device))
        return

    reps = args.reps or (2 if args.quick else 5)
    threads = torch.get_num_threads()
    print(
        f"NLQ model benchmark on {device} ({platform.processor() or platform.machine()}, {threads} threads, "
        f"torch {torch.__version__}); video {VIDEO_DIM}-d, text {TEXT_DIM}-d, hidden 256, T = 3\n"
    )
    header = f"{'case':<22}{'B×Lv×Lt':>16}{'time':>11}{'rate':>16}{'peak mem':>12}"
    print(header)
    print("-" * len(header))
    rows = []
    todo = cases(args.quick, compiled=not args.no_compile)
    today = next(c for c in todo if c.name == "train_cross")
    # before / after pairs are timed interleaved (ABBA), each path seeing the same K sequence; today's
    # step keeps the median of both pairings
    paired, today_times = {}, []
    for former in (c for c in todo if c.dropout == "torch" or not c.blocked):
        t_today, t_former = abba_seconds(runner(today, device), runner(former, device), device, max(reps, 4))
        paired[former.name] = t_former
        today_times.append(t_today)
    paired[today.name] = statistics.median(today_times)
    for case in todo:
        timed = paired.get(case.name)
        secs = timed if timed is not None else median_seconds(runner(case, device), device, reps)
        gc.collect()
        if args.no_memory or case.compile:  # a compiled probe would compile again in its subprocess
            mem = None
        elif device.type == "cuda":
            mem = peak_after_warmup(runner(case, device), device)
        else:
            mem = probe_in_subprocess(__file__, asdict(case), threads)
        rate = f"{1 / secs:.2f} steps/s" if case.kind == "train" else f"{secs * 1e3:.0f} ms/query"
        rate = f"{secs * 1e3:.1f} ms" if case.kind == "decode" else rate
        shape = f"{case.batch}×{case.video_len}×{case.text_len}"
        print(f"{case.name:<22}{shape:>16}{secs * 1e3:>9.0f}ms{rate:>16}{fmt_bytes(mem):>12}")
        sys.stdout.flush()
        rows.append({**asdict(case), "seconds": secs, "peak_bytes": mem})

    by = {r["name"]: r for r in rows}
    ratios = {}
    for name in sorted({r["name"].rsplit("_", 1)[0] for r in rows if r["decoder"] == "pruned"}):
        if f"{name}_self" not in by:
            continue
        cross, self_ = by[f"{name}_cross"], by[f"{name}_self"]
        ratios[f"{name}: self time / cross time"] = round(self_["seconds"] / cross["seconds"], 2)
        if cross["peak_bytes"] and self_["peak_bytes"]:
            ratios[f"{name}: self peak / cross peak"] = round(self_["peak_bytes"] / cross["peak_bytes"], 2)
    long = cases(args.quick)[-1].video_len
    pairs = {
        f"hour-long query ({long} bins): dense / pruned decoder time": (f"infer{long}_cross_dense",
                                                                         f"infer{long}_cross"),
        f"decoder alone ({long} bins): dense / pruned time": (f"decode{long}_dense", f"decode{long}_pruned"),
    }  # fmt: skip
    ratios["training step: former dropout / today's time"] = round(
        by["train_cross_torchdropout"]["seconds"] / by["train_cross"]["seconds"], 2
    )
    ratios["training step: unblocked / blocked attention time"] = round(
        by["train_cross_unblocked"]["seconds"] / by["train_cross"]["seconds"], 2
    )
    ratios[f"hour-long query ({long} bins): float32 / bf16-mixed time"] = round(
        by[f"infer{long}_cross"]["seconds"] / by[f"infer{long}_cross_bf16"]["seconds"], 2
    )
    ratios[f"hour-long query ({long} bins): 5 scales / 1 scale time"] = round(
        by[f"infer{long}_cross"]["seconds"] / by[f"infer{long}_cross_1scale"]["seconds"], 2
    )
    if "train_cross_compiled" in by:
        ratios["training step: eager / torch.compile time"] = round(
            by["train_cross"]["seconds"] / by["train_cross_compiled"]["seconds"], 2
        )
    ratios["training step: float32 / bf16-mixed time"] = round(
        by["train_cross"]["seconds"] / by["train_cross_bf16"]["seconds"], 2
    )
    # counted FLOPs per second against the measured matmul peak of the step's precision
    for name, dtype in (("train_cross", torch.float32), ("train_cross_bf16", torch.bfloat16)):
        case = next(c for c in todo if c.name == name)
        flops, peak = step_flops(case, device), matmul_peak(device, dtype)
        achieved = flops / by[name]["seconds"]
        by[name] |= {"flops": flops, "matmul_peak_flops": peak}
        label = f"{name}: % of {str(dtype).split('.')[-1]} matmul peak"
        ratios[label] = round(100 * achieved / peak, 1)
        print(
            f"{name}: {flops / 1e9:.0f} GFLOP / step, {achieved / 1e9:.0f} GFLOP/s, "
            f"matmul peak {peak / 1e9:.0f} GFLOP/s"
        )
    for label, (dense, pruned) in pairs.items():
        ratios[label] = round(by[dense]["seconds"] / by[pruned]["seconds"], 2)
        if by[dense]["peak_bytes"] and by[pruned]["peak_bytes"]:
            memory = label.replace("time", "peak memory")
            ratios[memory] = round(by[dense]["peak_bytes"] / by[pruned]["peak_bytes"], 2)
    print("\nratios (measured side by side in this run)")
    for key, value in ratios.items():
        print(f"  {key:<44} {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": str(device), "threads": threads, "torch": torch.__version__, "reps": reps}
    out.write_text(json.dumps(result | {"rows": rows, "ratios": ratios}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
