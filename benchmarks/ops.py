"""Benchmark repsuite.ops: fast vs reference paths, side by side, forward+backward time and peak memory.

    python benchmarks/ops.py                    # full table (about 10 minutes on 2 CPU cores)
    python benchmarks/ops.py --quick            # a few shapes, for `make demo`
    python benchmarks/ops.py --device cuda      # on a GPU

Time: median of ``--reps`` forward+backward passes after a warm-up, in this process.
Peak memory: on CPU each (case, variant) runs once more in a fresh subprocess; glibc is told to serve big
blocks with mmap (so freed memory leaves the RSS), the peak-RSS counter is reset after the inputs exist
and one warm-up pass ran, and the reported figure is VmHWM − VmRSS at that point. On CUDA it is
``torch.cuda.max_memory_allocated`` above the allocated bytes before the pass.

Cases (from the thesis and issue #2):
* NLQ co-attention, B=32, Lv=600, Lt=32, D=256, 8 heads: video→text plus text→video (Eq. 2.2–2.3), and
  the self-attention baseline over the concatenated 632 rows (Moment-DETR, Eq. 2.1);
* long video, B=1, Lv=6,750 (an hour) and 100,000: the same pair. A 100,032-row self-attention is O(L²):
  its reference path needs B·H·L²·4 bytes per score tensor (320 GB), so it is always extrapolated from the
  6,750-row run; its fast path takes ~8 minutes per forward+backward here, so it is extrapolated too
  unless ``--run-100k-self`` is given;
* StyleGAN2-512 modulated convolutions, B=4, 3×3, demodulated: 512 ch at 32 px, 256 ch at 128 px,
  64 ch at 512 px, and the 512 ch 2× upsampling conv; variants fast (auto), grouped-only, scaled-only
  and the per-sample reference loop;
* fused leaky ReLU on (4, 64, 512, 512);
* the NLQ span encoder's training kernels, B=32, L=600, D=256: self-attention with dropout 0.1 on the
  weights (fast: the blocked kernel; unblocked: the same maths on whole (B, H, L, L) tensors with the same
  cheap dropout mask; reference: the explicit path with ``F.dropout``), and the depthwise convolution
  (kernel 7) along L of a (B, L, D) sequence.
It also measures the fp32 matmul peak of this device, so kernel throughput reads as a fraction of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import fmt_bytes, peak_above_resting, probe_in_subprocess, sync
from repsuite.ops import (
    depthwise_conv1d,
    depthwise_conv1d_reference,
    dropout,
    fused_leaky_relu,
    fused_leaky_relu_reference,
    modulated_conv2d,
    modulated_conv2d_reference,
    multi_head_attention,
    multi_head_attention_reference,
)

D_MODEL, HEADS = 256, 8
DH = D_MODEL // HEADS


# ------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    kind: str  # "attention" | "modconv" | "flrelu"
    params: dict
    variants: tuple[str, ...]
    flops: float = 0.0  # forward+backward useful FLOPs (direct-convolution / matmul count)
    estimate_only: tuple[str, ...] = ()  # variants not run: reported as analytic estimates
    note: str = ""


def attention_cases(quick: bool, run_100k_self: bool) -> list[Case]:
    out = []
    shapes = [("nlq", 32, 600, 32)] + ([("long6750", 1, 6750, 32)] if not quick else [])
    if not quick:
        shapes.append(("long100k", 1, 100_000, 32))
    for tag, b, lv, lt in shapes:
        # fwd 2 matmuls, bwd 4 matmuls, each 2·Lq·Lk·Dh per (b, h); both directions
        co_flops = 2 * 6 * b * HEADS * lv * lt * DH
        out.append(
            Case(
                f"{tag}_coattn",
                "attention",
                {"mode": "cross", "b": b, "lv": lv, "lt": lt},
                ("fast", "reference"),
                co_flops,
            )
        )
        ls = lv + lt
        est = ()
        if tag == "long100k":  # the materialised reference needs ~300 GiB: always an estimate
            est = ("reference",) if run_100k_self else ("fast", "reference")
        out.append(
            Case(
                f"{tag}_selfattn",
                "attention",
                {"mode": "self", "b": b, "lv": lv, "lt": lt},
                ("fast", "reference"),
                6 * 2 * b * HEADS * ls * ls * DH,
                estimate_only=est,
            )
        )
    return out


def modconv_cases(quick: bool) -> list[Case]:
    shapes = [(512, 32, 1)] if quick else [(512, 32, 1), (256, 128, 1), (64, 512, 1), (512, 32, 2)]
    out = []
    for c, r, up in shapes:
        r_out = r * up
        flops = 3 * 2 * 4 * c * c * 9 * r_out * r_out  # fwd + grad_input + grad_weight
        name = f"modconv_{c}ch_{r}px" + ("_up2" if up == 2 else "")
        out.append(
            Case(
                name,
                "modconv",
                {"b": 4, "c": c, "r": r, "up": up},
                ("fast", "grouped", "scaled", "reference"),
                flops,
            )
        )
    if not quick:
        out.append(Case("flrelu_64ch_512px", "flrelu", {"shape": (4, 64, 512, 512)}, ("fast", "reference")))
    return out


def span_encoder_cases(quick: bool) -> list[Case]:
    b, length = (4, 600) if quick else (32, 600)
    attn_flops = 6 * 2 * b * HEADS * length * length * DH  # fwd 2 matmuls, bwd 4 (recomputed: not counted)
    return [
        Case("span_selfattn_dropout", "dropattn", {"b": b, "l": length, "p": 0.1},
             ("fast", "unblocked", "reference"), attn_flops),
        Case("span_dwconv_k7", "dwconv", {"b": b, "l": length, "k": 7}, ("fast", "reference"),
             3 * 2 * b * length * D_MODEL * 7),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------- runners
def make_runner(case: Case, variant: str, device: torch.device) -> tuple[list[torch.Tensor], Callable]:
    """Inputs (leaf tensors requiring grad) and a function computing the summed output."""
    g = torch.Generator().manual_seed(0)
    p = case.params

    def leaf(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        t = torch.randn(*shape, generator=g) * scale + offset
        return t.to(device).requires_grad_(True)

    if case.kind == "attention":
        fn = multi_head_attention if variant == "fast" else multi_head_attention_reference
        b, lv, lt = p["b"], p["lv"], p["lt"]
        if p["mode"] == "cross":
            qv, kv, vv = (leaf(b, HEADS, lv, DH) for _ in range(3))
            qt, kt, vt = (leaf(b, HEADS, lt, DH) for _ in range(3))

            def run() -> torch.Tensor:
                # video queries attend to text, text queries attend to video (one cross-modal layer)
                return fn(qv, kt, vt).sum() + fn(qt, kv, vv).sum()

            return [qv, kv, vv, qt, kt, vt], run
        q, k, v = (leaf(b, HEADS, lv + lt, DH) for _ in range(3))
        return [q, k, v], lambda: fn(q, k, v).sum()

    if case.kind == "dropattn":
        from repsuite.ops import attention as attention_mod

        q, k, v = (leaf(p["b"], HEADS, p["l"], DH) for _ in range(3))
        pad = torch.zeros(p["b"], p["l"], dtype=torch.bool, device=device)
        pad[1::2, p["l"] * 3 // 4 :] = True  # half the batch padded, as clips of several lengths are
        if variant == "unblocked":
            mask = (~pad)[:, None, None, :]
            return [q, k, v], lambda: attention_mod._explicit(q, k, v, mask, p["p"], dropout).sum()
        fn = multi_head_attention if variant == "fast" else multi_head_attention_reference
        return [q, k, v], lambda: fn(q, k, v, key_padding_mask=pad, dropout_p=p["p"]).sum()

    if case.kind == "dwconv":
        x = leaf(p["b"], p["l"], D_MODEL)
        w, bias = leaf(D_MODEL, 1, p["k"], scale=0.3), leaf(D_MODEL)
        fn = depthwise_conv1d if variant == "fast" else depthwise_conv1d_reference
        return [x, w, bias], lambda: fn(x, w, bias).square().sum()

    if case.kind == "modconv":
        b, c, r, up = p["b"], p["c"], p["r"], p["up"]
        x = leaf(b, c, r, r)
        w = leaf(c, c, 3, 3, scale=1 / math.sqrt(c * 9))
        s = leaf(b, c, scale=0.5, offset=1.0)
        if variant == "reference":
            return [x, w, s], lambda: modulated_conv2d_reference(x, w, s, up=up).sum()
        form = {"fast": "auto", "grouped": "grouped", "scaled": "scaled"}[variant]
        return [x, w, s], lambda: modulated_conv2d(x, w, s, up=up, formulation=form).sum()

    if case.kind == "flrelu":
        x = leaf(*p["shape"])
        bias = leaf(p["shape"][1])
        fn = fused_leaky_relu if variant == "fast" else fused_leaky_relu_reference
        return [x, bias], lambda: fn(x, bias).square().sum()
    raise ValueError(case.kind)


def step(inputs: list[torch.Tensor], run: Callable) -> None:
    for t in inputs:
        t.grad = None
    run().backward()


def time_variants(case: Case, variants: list[str], device: torch.device, reps: int) -> dict[str, float]:
    """Median forward+backward seconds per variant, repetitions interleaved round-robin so that drift
    (turbo, other load) hits every variant alike."""
    runners = {v: make_runner(case, v, device) for v in variants}
    for inputs, run in runners.values():
        step(inputs, run)  # warm-up (oneDNN primitive creation, cuDNN autotune)
    sync(device)
    t0 = time.perf_counter()
    for inputs, run in runners.values():
        step(inputs, run)
    sync(device)
    per_round = time.perf_counter() - t0
    # cheap cases get more rounds (at least ~3 s of timing per case, at most 25 rounds): stabler medians
    reps = max(reps, min(25, math.ceil(3.0 / max(per_round, 1e-6))))
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(reps):
        for v, (inputs, run) in runners.items():
            t0 = time.perf_counter()
            step(inputs, run)
            sync(device)
            times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def peak_memory_here(case: Case, variant: str, device: torch.device) -> int:
    """Peak bytes above the resting footprint during one forward+backward (run in a fresh process on CPU)."""
    inputs, run = make_runner(case, variant, device)
    step(inputs, run)
    for t in inputs:
        t.grad = None
    gc.collect()
    return peak_above_resting(lambda: step(inputs, run), device)


def peak_memory(case: Case, variant: str, device: torch.device, threads: int) -> int | None:
    if device.type == "cuda":
        return peak_memory_here(case, variant, device)
    return probe_in_subprocess(__file__, {"case": asdict(case), "variant": variant}, threads)


def matmul_peak_gflops(device: torch.device) -> float:
    """Best fp32 GEMM rate over a few square sizes (the yardstick for kernel efficiency)."""
    best = 0.0
    for n in (1024, 2048, 3072, 4096):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        c = torch.empty(n, n, device=device)
        for _ in range(2):
            torch.mm(a, b, out=c)
        sync(device)
        for _ in range(5):
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


# ------------------------------------------------------------------------------------------- estimates
def estimate(case: Case, variant: str, measured: Row | None) -> dict:
    """Extrapolate a 100,032-row self-attention from the measured 6,782-row one (same variant).

    Time is O(L²) for both paths. Peak memory is O(L²) for the reference path (it keeps a score-sized
    tensor for backward) and O(L) for the fast path (the flash kernel keeps q, k, v, out and the
    log-sum-exp only).
    """
    p = case.params
    ls = p["lv"] + p["lt"]
    if measured is None or measured.seconds is None:
        return {"peak_bytes": None, "seconds": None, "estimated": True, "why": "no measured 6,750-row run"}
    base_ls = 6750 + p["lt"]
    f = ls / base_ls
    seconds = measured.seconds * f**2
    if variant == "reference":
        peak = measured.peak_bytes * f**2 if measured.peak_bytes else None
        why = (
            "L² extrapolation of the 6,750-row run; one score tensor alone is "
            + fmt_bytes(p["b"] * HEADS * ls * ls * 4)
            + ", more than this machine has"
        )
    else:
        peak = measured.peak_bytes * f if measured.peak_bytes else None
        why = "time L², memory L extrapolated from the 6,750-row run (pass --run-100k-self to measure)"
    return {"peak_bytes": peak, "seconds": seconds, "estimated": True, "why": why}


# ------------------------------------------------------------------------------------------- report
@dataclass
class Row:
    case: str
    variant: str
    seconds: float | None
    peak_bytes: int | None
    gflops: float | None
    frac_peak: float | None
    estimated: bool = False
    why: str = ""
    extra: dict = field(default_factory=dict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="NLQ shape and one StyleGAN2 layer only")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per variant (default 7, quick 5)"
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument(
        "--run-100k-self",
        action="store_true",
        help="really run the 100,032-row self-attention fast path (~11 min on 2 CPU cores)",
    )
    ap.add_argument("--only", default=None, help="substring filter on case names")
    ap.add_argument("--out", default="benchmarks/results/ops.json", help="JSON output path")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown to this path")
    ap.add_argument("--from-json", default=None, help="only render --markdown from an earlier JSON result")
    ap.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)

    if args.from_json:
        Path(args.markdown or "/dev/stdout").write_text(
            markdown(json.loads(Path(args.from_json).read_text()))
        )
        return

    if args._memory:  # child process: one peak-memory probe
        spec = json.loads(args._memory)
        case = Case(**{**spec["case"], "variants": tuple(spec["case"]["variants"])})
        print(peak_memory_here(case, spec["variant"], device))
        return

    reps = args.reps or (5 if args.quick else 7)
    threads = torch.get_num_threads()
    print(
        f"repsuite.ops benchmark on {device} ({platform.processor() or platform.machine()}, "
        f"{threads} threads, torch {torch.__version__})"
    )
    peak = matmul_peak_gflops(device)
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s\n")

    cases = attention_cases(args.quick, args.run_100k_self) + modconv_cases(args.quick)
    cases += span_encoder_cases(args.quick)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    rows: list[Row] = []
    header = f"{'case':<26}{'variant':<11}{'fwd+bwd':>11}{'peak mem':>12}{'GFLOP/s':>9}{'% peak':>8}  notes"
    print(header)
    print("-" * len(header))
    for case in cases:
        measured = [v for v in case.variants if v not in case.estimate_only]
        seconds = time_variants(case, measured, device, reps) if measured else {}
        gc.collect()
        for variant in case.variants:
            if variant in case.estimate_only:
                est = estimate(
                    case,
                    variant,
                    next((r for r in rows if r.case == "long6750_selfattn" and r.variant == variant), None),
                )
                row = Row(case.name, variant, est["seconds"], est["peak_bytes"], None, None, True, est["why"])
            else:
                secs = seconds[variant]
                mem = None if args.no_memory else peak_memory(case, variant, device, threads)
                gf = case.flops / secs / 1e9 if case.flops else None
                row = Row(case.name, variant, secs, mem, gf, gf / peak if gf else None)
            rows.append(row)
            t = f"{row.seconds * 1e3:9.1f}ms" if row.seconds is not None else f"{'-':>11}"
            g = f"{row.gflops:9.1f}" if row.gflops else f"{'-':>9}"
            fp = f"{100 * row.frac_peak:7.0f}%" if row.frac_peak else f"{'-':>8}"
            mark = "~" if row.estimated else " "
            print(
                f"{row.case:<26}{row.variant:<11}{mark}{t[1:] if mark == '~' else t:>10}"
                f"{fmt_bytes(row.peak_bytes):>12}{g}{fp}  {'estimate: ' + row.why if row.estimated else ''}"
            )
        sys.stdout.flush()

    ratios = summarise(rows)
    print("\nratios (measured side by side in this run; ~ = involves an estimate)")
    for key, value in ratios.items():
        print(f"  {key:<62} {value}")
    result = {
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "matmul_peak_gflops": peak,
        "reps": reps,
        "rows": [asdict(r) for r in rows],
        "ratios": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
        print(f"wrote {args.markdown}")


def markdown(result: dict) -> str:
    """The README table: one line per (case, variant), then the ratios."""
    lines = [
        f"Measured on {result['device']} ({result['processor']}, {result['threads']} threads, torch "
        f"{result['torch']}); fp32 matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s. "
        "`~` marks an extrapolation, not a measurement.",
        "",
        "| case | variant | fwd+bwd | peak memory | GFLOP/s | % of matmul peak |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        mark = "~" if r["estimated"] else ""
        secs = f"{mark}{r['seconds'] * 1e3:.1f} ms" if r["seconds"] is not None else "-"
        gf = f"{r['gflops']:.1f}" if r["gflops"] else "-"
        fp = f"{100 * r['frac_peak']:.0f}%" if r["frac_peak"] else "-"
        mem = f"{mark}{fmt_bytes(r['peak_bytes'])}" if r["peak_bytes"] is not None else "-"
        lines.append(f"| {r['case']} | {r['variant']} | {secs} | {mem} | {gf} | {fp} |")
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in result["ratios"].items()]
    return "\n".join(lines)


def summarise(rows: list[Row]) -> dict[str, str]:
    by = {(r.case, r.variant): r for r in rows}
    out: dict[str, str] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    for tag in ("nlq", "long6750", "long100k"):
        fast, ref = by.get((f"{tag}_coattn", "fast")), by.get((f"{tag}_coattn", "reference"))
        if fast and ref:
            out[f"{tag} co-attention: reference time / fast time"] = (
                f"{ratio(ref.seconds, fast.seconds):.2f}x"
            )
        sf, sr = by.get((f"{tag}_selfattn", "fast")), by.get((f"{tag}_selfattn", "reference"))
        if sf and sr and sf.seconds and sr.seconds:
            mark = "~" if sf.estimated or sr.estimated else ""
            out[f"{tag} self-attention: reference time / fast time"] = (
                f"{mark}{ratio(sr.seconds, sf.seconds):.2f}x"
            )
        if fast and sf and fast.peak_bytes and sf.peak_bytes:
            mark = "~" if sf.estimated else ""
            out[f"{tag} memory: co-attn fast / self-attn fast"] = (
                f"{mark}1/{sf.peak_bytes / fast.peak_bytes:.1f}"
            )
        if fast and sr and fast.peak_bytes and sr.peak_bytes:
            mark = "~" if sr.estimated else ""
            out[f"{tag} memory: co-attn fast / self-attn reference (materialised)"] = (
                f"{mark}1/{sr.peak_bytes / fast.peak_bytes:.0f}"
            )
        if fast and sf and fast.seconds and sf.seconds:
            mark = "~" if sf.estimated else ""
            out[f"{tag} time: self-attn fast / co-attn fast"] = f"{mark}{sf.seconds / fast.seconds:.1f}x"
    for r in rows:
        if r.case == "span_selfattn_dropout" and r.variant == "fast":
            for other in ("unblocked", "reference"):
                o = by[(r.case, other)]
                out[f"{r.case}: {other} time / fast time"] = f"{ratio(o.seconds, r.seconds):.2f}x"
                if r.peak_bytes and o.peak_bytes:
                    out[f"{r.case}: memory {other} / fast"] = f"{o.peak_bytes / r.peak_bytes:.2f}"
        if r.case == "span_dwconv_k7" and r.variant == "fast":
            ref = by[(r.case, "reference")]
            out[f"{r.case}: reference time / fast time"] = f"{ratio(ref.seconds, r.seconds):.2f}x"
        if r.case.startswith("modconv") and r.variant == "fast":
            grouped, ref = by[(r.case, "grouped")], by[(r.case, "reference")]
            out[f"{r.case}: grouped-only time / fast time"] = f"{ratio(grouped.seconds, r.seconds):.2f}x"
            out[f"{r.case}: reference time / fast time"] = f"{ratio(ref.seconds, r.seconds):.2f}x"
            out[f"{r.case}: fast throughput / matmul peak"] = f"{100 * (r.frac_peak or 0):.0f}%"
        if r.case.startswith("flrelu") and r.variant == "fast":
            ref = by[(r.case, "reference")]
            out[f"{r.case}: reference time / fast time"] = f"{ratio(ref.seconds, r.seconds):.2f}x"
            if r.peak_bytes and ref.peak_bytes:
                out[f"{r.case}: memory fast / reference"] = f"{r.peak_bytes / ref.peak_bytes:.2f}"
    return out


if __name__ == "__main__":
    main()
