"""Benchmark NLQ frame-feature extraction: decode only, encode only and end to end, in frames/s, one run.

    python benchmarks/extract.py                 # 2 × 40 s synthetic 640x360 H.264 videos, ViT-B/16 on CPU
    python benchmarks/extract.py --quick         # tiny shapes, checks the script runs
    python benchmarks/extract.py --device cuda   # encoder on a GPU

Stages (a "frame" is one official feature row: one sampled frame per 32-frame window):

* decode: :class:`~repsuite.nlq.extract.pipeline.VideoRowsDataset` in this process — probe, decode the stream,
  keep the sampled frames, resize their short side to 224 (what DataLoader workers do);
* encode: the frozen open_clip ViT-B-16 image tower (randomly initialised: same cost as the real weights)
  on batches of 224 px uint8 frames, preprocessing included;
* end to end: ``repsuite nlq extract-video`` (a Lightning predict run with ``--num-workers`` decoding
  workers and the atomic writer), wall time divided by rows written.

The slowest of decode and encode bounds the end-to-end rate; the script says which.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repsuite.nlq.extract.frame_encoder import FrameEncoder
from repsuite.nlq.extract.pipeline import VideoRowsDataset, plan_videos


def write_videos(folder: Path, count: int, seconds: float, width: int, height: int) -> None:
    """Synthetic H.264 videos with moving structure and noise (so decoding does real work)."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for v in range(count):
        with av.open(str(folder / f"video{v}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=Fraction(30))
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            s.options = {"preset": "veryfast", "crf": "23"}
            for i in range(int(seconds * 30)):
                base = (np.sin((xx + 3 * i) / 17.0) + np.cos((yy - 2 * i) / 11.0)) * 60 + 128
                img = np.clip(base[..., None] + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(
                    np.uint8
                )
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=1, help="decoding workers of the end-to-end run")
    ap.add_argument("--out", default="benchmarks/results/extract.json")
    args = ap.parse_args()
    count, seconds, (w, h) = (1, 4.0, (320, 180)) if args.quick else (2, 40.0, (640, 360))
    model = "ViT-B-16"
    threads = torch.get_num_threads()
    print(
        f"extraction benchmark on {args.device} ({platform.processor() or platform.machine()}, {threads} "
        f"threads, torch {torch.__version__}); {count} x {seconds:.0f} s {w}x{h} 30 fps H.264, encoder "
        f"open_clip {model} (random init), 224 px\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "videos").mkdir()
        write_videos(tmp / "videos", count, seconds, w, h)
        videos, _ = plan_videos([str(tmp / "videos")])

        t0 = time.perf_counter()
        ds = VideoRowsDataset(videos, tmp / "none", short_side=224, chunk=args.batch_size)
        batches = [item["frames"] for item in ds if "frames" in item]
        decode_s = time.perf_counter() - t0
        rows = sum(b.shape[0] for b in batches)
        decode_fps = rows / decode_s
        print(f"decode only : {rows} frames in {decode_s:6.2f} s = {decode_fps:7.1f} frames/s")

        device = torch.device(args.device)
        encoder = FrameEncoder("open_clip", model, random_init=True).to(device)
        frames = batches[0][: args.batch_size].to(device)
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with amp:
            encoder(frames)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = 0
            for b in batches:
                encoder(b.to(device))
                n += b.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
        encode_s = time.perf_counter() - t0
        encode_fps = n / encode_s
        print(f"encode only : {n} frames in {encode_s:6.2f} s = {encode_fps:7.1f} frames/s")

        from repsuite.cli import main as repsuite_main

        out = tmp / "features"
        cmd = ["nlq", "extract-video", str(tmp / "videos"), "-o", str(out), "--model", model, "--random-init",
               "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
               "--accelerator", "gpu" if device.type == "cuda" else "cpu", "--devices", "1"]  # fmt: skip
        t0 = time.perf_counter()
        assert repsuite_main(cmd) == 0
        e2e_s = time.perf_counter() - t0
        written = sum(torch.load(p, weights_only=True).shape[0] for p in out.glob("*.pt"))
        e2e_fps = written / e2e_s
        print(
            f"end to end  : {written} frames in {e2e_s:6.2f} s = {e2e_fps:7.1f} frames/s (incl. model build)"
        )

    bound = "encode" if encode_fps < decode_fps else "decode"
    print(
        f"\nbounded by {bound}: decode/encode rate ratio {decode_fps / encode_fps:.2f}; end to end reaches "
        f"{100 * e2e_fps / min(decode_fps, encode_fps):.0f}% of the slower stage"
    )
    result = {
        "device": args.device,
        "threads": threads,
        "videos": {"count": count, "seconds": seconds, "size": [w, h]},
        "decode_fps": decode_fps,
        "encode_fps": encode_fps,
        "end_to_end_fps": e2e_fps,
        "bound": bound,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
