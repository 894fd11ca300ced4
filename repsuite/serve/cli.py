r"""``repsuite serve``: the web page for trained models (``pip install 'repsuite[serve]'``).

    repsuite serve --nlq-ckpt outputs/nlq_demo/checkpoints/last.ckpt \\
        --faceswap-ckpt outputs/faceswap_demo/checkpoints/last.ckpt [--detector retinaface.pth]

Binds to 127.0.0.1 unless ``--host`` says otherwise. Uploads land in ``WORKDIR/uploads`` and results in
``WORKDIR/outputs`` (a fresh temporary folder by default); nothing else is read or written for a request.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from repsuite.errors import InputError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repsuite serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--nlq-ckpt", help="an NLQModule checkpoint (the NLQ tab)")
    p.add_argument("--faceswap-ckpt", help="a FaceSwapModule checkpoint (the face-swap tab)")
    p.add_argument("--detector", help="RetinaFace weights for photos of any size and videos; without it, "
                   "photos must be aligned face crops (FFHQ / VGGFace2-HQ style)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--workdir", help="folder for uploads and results (default: a new temporary folder)")
    p.add_argument("--max-file-size", default="25mb", help="largest upload (Gradio size string)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond this are refused")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    return p


def build_services(args: argparse.Namespace, workdir: Path) -> dict:
    """The services behind the page (checkpoints loaded, folders made); what :func:`build_app` takes."""
    from repsuite.serve.catalogue import NLQCatalogue
    from repsuite.serve.services import FaceService, NLQService, UploadGuard

    uploads, outputs = workdir / "uploads", workdir / "outputs"
    uploads.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    guard = UploadGuard([uploads])
    services: dict = {}
    if args.nlq_ckpt:
        from repsuite.nlq.predictor import NLQPredictor

        predictor = NLQPredictor.from_checkpoint(args.nlq_ckpt, device=args.device)
        services["nlq"] = NLQService(predictor, NLQCatalogue.from_data(predictor.data), outputs, guard)
    if args.faceswap_ckpt:
        from repsuite.faceswap.detection import AlignedFaces
        from repsuite.faceswap.swapper import FaceSwapper

        detector = args.detector or AlignedFaces()
        swapper = FaceSwapper.from_checkpoint(args.faceswap_ckpt, detector=detector, device=args.device)
        services["faces"] = FaceService(swapper, outputs, guard)
        services["face_video"] = bool(args.detector)
    return services


def main(argv: list[str] | None = None) -> int:
    """Start the page; returns when the server stops."""
    args = _parser().parse_args(argv)
    if not (args.nlq_ckpt or args.faceswap_ckpt):
        print("repsuite serve: give --nlq-ckpt and/or --faceswap-ckpt", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="repsuite-serve-")).resolve()
    # before Gradio is imported: where it keeps uploads, and no calls home
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from repsuite.serve.app import build_app
    except ImportError as err:
        print(
            f"repsuite serve needs the 'serve' extra ({err}): pip install 'repsuite[serve]'", file=sys.stderr
        )
        return 2
    try:
        services = build_services(args, workdir)
    except (InputError, FileNotFoundError) as err:
        print(f"repsuite serve: {err}", file=sys.stderr)
        return 2
    app = build_app(max_queue=args.max_queue, **services)
    print(f"repsuite serve: uploads and results in {workdir}", flush=True)
    app.launch(
        server_name=args.host, server_port=args.port, max_file_size=args.max_file_size,
        allowed_paths=[str(workdir / "outputs")], show_error=True, ssr_mode=False, quiet=False,
    )  # fmt: skip
    return 0
