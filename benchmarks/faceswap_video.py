"""Frames per second of ``FaceSwapper.swap_video`` on a synthetic clip, and where the time goes.

    python benchmarks/faceswap_video.py --ckpt outputs/faceswap_demo/checkpoints/last.ckpt   # after make demo
    python benchmarks/faceswap_video.py --ckpt CKPT --size 1280x720 --detector resnet50
    python benchmarks/faceswap_video.py --ckpt CKPT --quick                                  # plumbing check

The clip is ``repsuite.faceswap.synthetic.write_face_video``: ``--seconds`` of one synthetic face moving
across a ``--size`` frame at ``--fps``, with AAC audio. Detection runs the real RetinaFace network
(``--detector``: MobileNet-0.25 or ResNet-50) on every frame at full size, with random weights — the cost of
the published checkpoints — while the faces it reports are the clip's ground truth (random weights find
none). Decode, swap (alignment + generator + colour matching), paste and H.264 encode are the library's
own. Prints the report (frames/s, share per stage) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repsuite.faceswap.detection import RetinaFace, RetinaFaceConfig, RetinaFaceDetector
from repsuite.faceswap.swapper import FaceSwapper
from repsuite.faceswap.synthetic import write_face_video


class CostedTruth:
    """RetinaFace's forward pass for its cost, the clip's true faces for its answer (by frame)."""

    def __init__(self, body: str, truth: list, device: torch.device) -> None:
        torch.manual_seed(0)
        self.net = RetinaFaceDetector(RetinaFace(RetinaFaceConfig(body)), max_size=None).to(device)
        self.truth, self.calls = truth, -1

    def __call__(self, images: torch.Tensor) -> list:
        self.net(images)
        self.calls += 1
        return [self.truth[min(self.calls, len(self.truth) - 1)]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="a FaceSwapModule checkpoint")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the clip")
    ap.add_argument("--face", type=int, default=160, help="face size in pixels")
    ap.add_argument("--detector", choices=["mobilenet0.25", "resnet50"], default="mobilenet0.25")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="1 s at 96x64 (checks the script runs)")
    ap.add_argument("--out", default="benchmarks/results/faceswap_video.json")
    args = ap.parse_args()

    width, height = (96, 64) if args.quick else map(int, args.size.lower().split("x"))
    seconds, face = (1.0, 40) if args.quick else (args.seconds, args.face)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip, truth = write_face_video(Path(tmp) / "clip.mp4", seconds, args.fps, (width, height), face,
                                       no_face_frames=0)  # fmt: skip
        detector = CostedTruth(args.detector, truth, device)
        swapper = FaceSwapper.from_checkpoint(args.ckpt, detector=detector, device=device)
        identity = swapper.identity(torch.zeros(3, height, width, dtype=torch.uint8))  # truth[0]'s face
        detector.calls = -1
        report = swapper.swap_video(identity, clip, Path(tmp) / "out.mp4", batch_size=args.batch_size,
                                    progress=False)  # fmt: skip
    for line in report.lines():
        print(line)
    result = {
        "clip": {"seconds": seconds, "fps": args.fps, "size": [width, height], "face": face},
        "detector": args.detector,
        "model_resolution": swapper.size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "frames": report.frames,
        "frames_per_second": report.fps,
        "seconds_by_stage": report.seconds,
        "wall_seconds": report.wall,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
