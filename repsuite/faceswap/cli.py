"""``repsuite faceswap ...``: synthetic data, swapping images, aligning photos, evaluating a swapper.

``synth`` (synthetic faces in the VGGFace2-HQ / FFHQ layouts), ``swap`` (one pair or two folders of aligned
faces; or a photo with its 5 landmarks, aligned, swapped and pasted back), ``align`` (photo + 5 landmarks →
aligned crop and the transform), ``eval`` (ID retrieval, ID cosine, PSNR against ground truth, optional
pose / shape errors and FID over a pair folder).

Every image written is a PNG carrying a provenance record in its text chunks: ``repsuite`` (version),
``repsuite-checkpoint-sha256`` and ``synthetic: true`` — generated faces must be identifiable as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _parse_landmarks(text: str) -> list[list[float]]:
    """``"x1,y1 x2,y2 x3,y3 x4,y4 x5,y5"`` (or 10 comma-separated numbers) → 5 points."""
    nums = [float(v) for v in text.replace(",", " ").split()]
    if len(nums) != 10:
        raise ValueError(
            f"landmarks: expected 5 points (10 numbers: left eye, right eye, nose, mouth corners), "
            f"got {text!r}"
        )
    return [nums[i : i + 2] for i in range(0, 10, 2)]


def _require_png(path: Path) -> None:
    """Outputs are PNGs: only PNG carries the provenance text chunks."""
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"{path}: outputs are written as PNG (they carry a provenance record); use a .png name"
        )


def _save_png(img, path: Path, provenance: dict[str, str]) -> None:
    """(3, H, W) in [-1, 1] → PNG with provenance text chunks."""
    from PIL import Image, PngImagePlugin

    from repsuite._version import __version__

    _require_png(path)
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    info = PngImagePlugin.PngInfo()
    for k, v in {"repsuite": __version__, "synthetic": "true", **provenance}.items():
        info.add_text(k, str(v))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, pnginfo=info)


def _load_module(path: str, trust: bool):
    import torch

    from repsuite.checkpoints import file_sha256
    from repsuite.faceswap.module import FaceSwapModule

    try:
        module = FaceSwapModule.from_checkpoint(path)
    except Exception as err:
        if not trust or ("weights_only" not in str(err).lower() and "unpickl" not in str(err).lower()):
            hint = (
                ""
                if trust
                else "; if you trust this file, --trust-checkpoint loads it with pickle (runs code)"
            )
            raise ValueError(
                f"{path}: cannot be loaded as a FaceSwapModule checkpoint ({err}){hint}"
            ) from err
        module = FaceSwapModule._from_state(torch.load(path, map_location="cpu", weights_only=False))
    return module, file_sha256(path)


def _read(path: Path, size: int):
    from repsuite.faceswap.data import read_face

    return read_face(path, size)[0]


def _synth(ns: argparse.Namespace) -> int:
    from repsuite.faceswap.synthetic import SyntheticFacesSpec, write_synthetic_faces

    spec = SyntheticFacesSpec(
        resolution=ns.resolution, identities=ns.identities, images_per_identity=ns.images_per_identity,
        ffhq_images=ns.ffhq_images, eval_identities=ns.eval_identities, eval_pairs=ns.eval_pairs,
        judge_images=ns.judge_images, recon_images=ns.recon_images, seed=ns.seed,
    )  # fmt: skip
    root = write_synthetic_faces(ns.root, spec)
    judge = f", judge/ ({spec.judge_images} faces with their parameters)" if spec.judge_images else ""
    judge += f", recon/ ({spec.recon_images} more)" if spec.recon_images else ""
    print(
        f"wrote synthetic faces to {root}: vggface2_hq/ ({spec.identities} identities), ffhq/, pairs/"
        f" ({spec.eval_pairs} pairs of {spec.eval_identities} held-out identities){judge}"
    )
    return 0


def _align_photo(photo_path: Path, landmarks: str, size: int):
    import torch
    from PIL import Image

    from repsuite.faceswap.align import estimate_similarity, face_template, warp_affine

    with Image.open(photo_path) as im:
        if im.mode != "RGB":
            raise ValueError(f"{photo_path}: expected an RGB image, got mode {im.mode!r}")
        photo = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3)
    photo = photo.permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W)
    pts = torch.tensor(_parse_landmarks(landmarks))[None]
    m = estimate_similarity(pts, face_template(size)[None])  # photo → aligned
    return photo, warp_affine(photo, m, (size, size)), m


def _align(ns: argparse.Namespace) -> int:
    try:
        _, crop, m = _align_photo(Path(ns.photo), ns.landmarks, ns.size)
        _save_png(crop[0], Path(ns.output), {"repsuite-kind": "aligned crop"})
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if ns.matrix:
        Path(ns.matrix).write_text(json.dumps({"photo_to_aligned": m[0].tolist(), "size": ns.size}))
    print(f"aligned {ns.photo} -> {ns.output} ({ns.size} px)")
    return 0


def _parse_faces(text: str) -> Any:
    """``largest``, ``all`` or comma-separated indices (left to right)."""
    if text in ("largest", "all"):
        return text
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--faces: expected 'largest', 'all' or indices like '0,2', got {text!r}") from None


def _swap_photos(ns: argparse.Namespace) -> int:
    """Detected faces: the source's largest face onto the chosen faces of the target photo."""
    from repsuite.faceswap.swapper import FaceSwapper
    from repsuite.faceswap.video import VIDEO_SUFFIXES

    faces = _parse_faces(ns.faces)
    swapper = FaceSwapper.from_checkpoint(
        ns.ckpt, detector=ns.detector, device=ns.device, precision=ns.precision, compile=ns.compile
    )
    if Path(ns.target).suffix.lower() in VIDEO_SUFFIXES:
        report = swapper.swap_video(
            ns.source, ns.target, ns.output, faces=faces, detect_every=ns.detect_every, label=not ns.no_label,
            batch_size=ns.batch_size, colour_match=not ns.no_colour_match,
        )  # fmt: skip
        print("\n".join(report.lines()))
        return 0
    result = swapper.swap(ns.source, ns.target, faces=faces, colour_match=not ns.no_colour_match)
    result.save(ns.output)
    print(f"swapped {len(result.faces)} face(s) of {Path(ns.target).name} -> {ns.output}")
    return 0


def _swap(ns: argparse.Namespace) -> int:
    import torch

    photo_only = [flag for flag, on in (("--compile", ns.compile), ("--precision", ns.precision)) if on]
    if photo_only and not ns.detector:
        print(f"error: {' and '.join(photo_only)} apply with --detector (photos and videos) only; the "
              "aligned-face and folder modes run the generator as it is", file=sys.stderr)  # fmt: skip
        return 2
    if ns.detector:
        from repsuite.errors import InputError

        try:
            return _swap_photos(ns)
        except (InputError, ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    try:
        module, sha = _load_module(ns.ckpt, ns.trust_checkpoint)
        size = module.hparams.resolution
        src, tgt, out = Path(ns.source), Path(ns.target), Path(ns.output)
        prov = {"repsuite-checkpoint-sha256": sha}
        if src.is_dir() != tgt.is_dir():
            raise ValueError("--source and --target must both be files or both be folders")
        if src.is_dir():
            from repsuite.faceswap.data import IMAGE_EXTENSIONS

            names = sorted(
                p.name
                for p in src.iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS and (tgt / p.name).exists()
            )
            if not names:
                raise ValueError(f"{src} and {tgt}: no image file name is in both folders")
            for i in range(0, len(names), ns.batch_size):
                chunk = names[i : i + ns.batch_size]
                s = torch.stack([_read(src / n, size) for n in chunk])
                t = torch.stack([_read(tgt / n, size) for n in chunk])
                for n, img in zip(chunk, module.swap(s, t), strict=True):
                    _save_png(img, out / (Path(n).stem + ".png"), prov | {"source": n, "target": n})
            print(f"swapped {len(names)} pairs -> {out}")
            return 0
        if ns.source_landmarks:
            _, s, _ = _align_photo(src, ns.source_landmarks, size)
        else:
            s = _read(src, size)[None]
        if ns.target_landmarks:  # a photo: align, swap, paste back with a soft mask
            from repsuite.faceswap.align import paste_back

            photo, t, m = _align_photo(tgt, ns.target_landmarks, size)
            result, _ = paste_back(photo, module.swap(s, t), m)
        else:
            result = module.swap(s, _read(tgt, size)[None])
        _save_png(result[0], out, prov | {"source": src.name, "target": tgt.name})
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"swapped {src.name} onto {tgt.name} -> {out}")
    return 0


def _eval(ns: argparse.Namespace) -> int:
    import torch

    from repsuite.faceswap.data import PairFolderDataset
    from repsuite.faceswap.evaluation import evaluate_swaps, open_judge
    from repsuite.faceswap.metrics import ArcFaceEmbedder

    try:
        module, sha = _load_module(ns.ckpt, ns.trust_checkpoint)
        pairs = PairFolderDataset(ns.pairs, module.hparams.resolution)
        if ns.grid:
            _require_png(Path(ns.grid))  # before the swaps are computed, not after
        embedder = None
        if ns.id_encoder:
            from repsuite.faceswap.arcface import load_arcface

            embedder = ArcFaceEmbedder(load_arcface(ns.id_encoder))
        judge = open_judge(ns.id_judge) if ns.id_judge else None
        estimators = {k: torch.jit.load(v, map_location="cpu").eval() for k, v in
                      (("pose", ns.pose_estimator), ("shape", ns.shape_estimator)) if v}  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = evaluate_swaps(
        module, pairs, embedder, judge, estimators.get("pose"), estimators.get("shape"), ns.fid, ns.batch_size
    )
    _print_eval(results, independent_encoder=bool(ns.id_encoder))
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    if ns.grid:
        _write_grid(module, pairs, Path(ns.grid), {"repsuite-checkpoint-sha256": sha})
        print(f"swap grid (top row sources, left column targets): {ns.grid}")
    return 0


def _print_eval(results: dict, independent_encoder: bool) -> None:
    print(f"pairs: {results['pairs']}")
    if "judge" in results:
        _print_judge_table(results)
    else:
        print("note: no independent judge (--id-judge CKPT); the ID figures below are not a fair test")
    who = "independent --id-encoder" if independent_encoder else "the swapper's own training encoder"
    print(
        f"ID retrieval ({who}): {results['id_retrieval']:.2f}% (chance {results['chance_id_retrieval']:.2f}%)"
        f"   ID cosine: {results['id_cosine']:.3f}"
    )
    if "id_retrieval_ground_truth" in results:
        print(f"  of the ground-truth swaps (ceiling): {results['id_retrieval_ground_truth']:.2f}%")
    for key in ("pose_error", "shape_error", "fid"):
        if key in results:
            print(f"{key.replace('_', ' ')}: {results[key]:.4f}")
    if "psnr_swap" in results:
        print(
            f"PSNR vs ground-truth swaps: model {results['psnr_swap']:.2f} dB, copy target "
            f"{results['psnr_copy_target']:.2f} dB, copy source {results['psnr_copy_source']:.2f} dB"
        )


def _print_judge_table(results: dict) -> None:
    """Whose identity the independent judge sees, and pose / expression errors, per kind of image."""
    judge, chance = results["judge"], results["judge_chance"]
    print(f"independent judge ({judge}; took no part in training), chance {chance:.1f}%:")
    rows = [("swaps", "judge"), ("ground-truth swaps", "judge_ground_truth"),
            ("copy the target", "judge_copy_target"), ("copy the source", "judge_copy_source")]  # fmt: skip
    cols = [("source_top1", "source ID top-1 %", "{:.1f}"), ("target_top1", "target ID top-1 %", "{:.1f}"),
            ("pose_error", "pose error", "{:.3f}"),
            ("expression_error", "expression error", "{:.3f}")]  # fmt: skip
    cols = [c for c in cols if f"judge_{c[0]}" in results]
    print(f"  {'':20s}" + "".join(f"{title:>20s}" for _, title, _ in cols))
    for label, prefix in rows:
        if f"{prefix}_source_top1" in results:
            cells = "".join(f"{fmt.format(results[f'{prefix}_{key}']):>20s}" for key, _, fmt in cols)
            print(f"  {label:20s}{cells}")
    fields = [k.removeprefix("judge_transfer_") for k in results if k.startswith("judge_transfer_")]
    if fields:
        print("  identity parameters the swaps carry (0: kept the target's, 1: took the source's; the")
        print("  ground-truth swaps' in brackets):")
        nan = float("nan")
        swaps = [results[f"judge_transfer_{f}"] for f in fields]
        truth = [results.get(f"judge_ground_truth_transfer_{f}", nan) for f in fields]
        cells = [f"{f} {v:.2f} ({t:.2f})" for f, v, t in zip(fields, swaps, truth, strict=True)]
        for i in range(0, len(cells), 4):
            print("    " + "   ".join(f"{c:24s}" for c in cells[i : i + 4]).rstrip())


def _write_grid(module, pairs, path: Path, provenance: dict[str, str]) -> None:
    """Sources of distinct identities across the top, targets down the side, their swaps in between."""
    import torch

    from repsuite.faceswap.evaluation import swap_grid_pairs

    picked = swap_grid_pairs(pairs, module.hparams.grid_size)
    items = [pairs[i] for i in picked]
    grid = module.swap_grid(
        torch.stack([it["source"] for it in items]), torch.stack([it["target"] for it in items])
    )
    names = ",".join(pairs.names[i] for i in picked)
    _save_png(grid * 2 - 1, path, provenance | {"content": "swap grid", "pairs": names})


def build_parser() -> argparse.ArgumentParser:
    """The ``repsuite faceswap`` argument parser."""
    parser = argparse.ArgumentParser(prog="repsuite faceswap", description="Face-swap tools.")
    sub = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for add in (_add_synth, _add_swap, _add_align, _add_eval, _add_probe):
        add(sub)
    return parser


def _add_synth(sub: Any) -> None:  # the subparsers action
    sy = sub.add_parser(
        "synth", help="write synthetic faces (VGGFace2-HQ and FFHQ layouts, evaluation pairs)"
    )
    sy.add_argument("root", metavar="ROOT")
    sy.add_argument("--resolution", type=int, default=64)
    sy.add_argument("--identities", type=int, default=200)
    sy.add_argument("--images-per-identity", type=int, default=4)
    sy.add_argument("--ffhq-images", type=int, default=200)
    sy.add_argument("--eval-identities", type=int, default=20)
    sy.add_argument("--eval-pairs", type=int, default=100)
    sy.add_argument(
        "--judge-images", type=int, default=4000,
        help="faces of further identities with their parameters, to train the independent judge (0: none)",
    )  # fmt: skip
    sy.add_argument(
        "--recon-images", type=int, default=3000,
        help="faces of yet other identities with their parameters, to train the swapper's "
        "face-reconstruction network (shape-aware identity; 0: none)",
    )  # fmt: skip
    sy.add_argument("--seed", type=int, default=0)
    sy.set_defaults(func=_synth)


def _add_swap(sub: Any) -> None:  # the subparsers action
    sw = sub.add_parser(
        "swap",
        help="swap faces in photos (--detector), aligned faces (one pair or two folders), or a photo with "
        "--target-landmarks",
    )
    sw.add_argument("--ckpt", required=True, help="FaceSwapModule checkpoint")
    sw.add_argument("--source", required=True, help="aligned source face (identity) or a folder of them")
    sw.add_argument("--target", required=True, help="aligned target face (attributes) or a folder of them")
    sw.add_argument("-o", "--output", required=True, help="OUT.png, or a folder in folder mode")
    sw.add_argument("--source-landmarks", help="source is a photo: its 5 landmarks 'x,y x,y x,y x,y x,y'")
    sw.add_argument(
        "--target-landmarks", help="target is a photo: align it, swap, paste back with a soft mask"
    )
    sw.add_argument("--batch-size", type=int, default=8)
    sw.add_argument("--trust-checkpoint", action="store_true", help="allow pickled checkpoints (runs code)")
    detector = "RetinaFace checkpoint (detection_Resnet50_Final.pth / mobilenet0.25_Final.pth): source and "
    sw.add_argument("--detector", help=detector + "target are ordinary photos, faces are found")
    sw.add_argument("--faces", default="largest", help="with --detector: largest, all, or indices '0,2'")
    sw.add_argument("--no-colour-match", action="store_true", help="with --detector: keep the swap's colours")
    sw.add_argument("--device", help="with --detector: default cuda when available, else cpu")
    sw.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        help="with --detector: bf16-mixed runs the generator in bf16 with channels-last tensors (several "
        "times faster on CPUs with AMX and on GPUs; swaps differ by ~0.05 in [-1, 1]); default 32-true",
    )
    sw.add_argument(
        "--compile",
        action="store_true",
        help="with --detector: compile the generator with the source folded in (torch.compile, frozen "
        "weights; ~1 min per source and batch shape on a CPU, then ~1.5x faster): for videos and folders",
    )
    every = "with a video --target: run the detector on every N-th frame (landmarks smoothed in between)"
    sw.add_argument("--detect-every", type=int, default=1, metavar="N", help=every)
    no_label = "with a video --target: no visible 'AI-generated' corner label (recorded in the metadata)"
    sw.add_argument("--no-label", action="store_true", help=no_label)
    sw.set_defaults(func=_swap)


def _add_align(sub: Any) -> None:  # the subparsers action
    al = sub.add_parser("align", help="photo + 5 landmarks -> aligned face crop (FFHQ template)")
    al.add_argument("photo")
    al.add_argument("--landmarks", required=True, help="'x,y x,y x,y x,y x,y': eyes, nose, mouth corners")
    al.add_argument("--size", type=int, default=512)
    al.add_argument("-o", "--output", required=True, help="crop.png")
    al.add_argument("--matrix", help="also write the photo→crop transform as JSON")
    al.set_defaults(func=_align)


def _add_eval(sub: Any) -> None:  # the subparsers action
    ev = sub.add_parser(
        "eval", help="ID retrieval / cosine, PSNR vs ground truth, pose, shape, FID over pairs"
    )
    ev.add_argument("pairs", help="folder with source/, target/ (and ground_truth/, identities.json)")
    ev.add_argument("--ckpt", required=True)
    ev.add_argument("--id-encoder", help="independent ArcFace weights for the ID retrieval / cosine figures")
    ev.add_argument(
        "--id-judge",
        metavar="CKPT",
        help="independent judge: a FaceJudgeModule checkpoint (configs/faceswap/judge_demo.yaml; identity, "
        "pose, expression) or an ArcFace backbone.pth other than the training one (identity)",
    )
    ev.add_argument(
        "--pose-estimator", help="TorchScript model: faces (B,3,S,S) in [-1,1] -> (B,3) yaw/pitch/roll"
    )
    ev.add_argument("--shape-estimator", help="TorchScript model: faces -> (B,K) 3DMM shape coefficients")
    ev.add_argument("--fid", action="store_true", help="FID of swaps vs targets on the ID encoder's features")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--json", help="also write the results as JSON")
    ev.add_argument("--grid", help="also write a sources x targets swap grid (PNG)")
    ev.add_argument("--trust-checkpoint", action="store_true")
    ev.set_defaults(func=_eval)


def _add_probe(sub: Any) -> None:  # the subparsers action
    pr = sub.add_parser(
        "probe", help="which identity parameters identity encoders carry (synthetic faces: linear probe R²)"
    )
    pr.add_argument(
        "encoders", nargs="+", metavar="CKPT", help="identity encoders (ArcFace / IdentityModule)"
    )
    pr.add_argument("--faces", required=True, help="folder of faces with params.json (ROOT/judge of synth)")
    pr.add_argument("--limit", type=int, default=2000, help="faces used (the first N, sorted)")
    pr.add_argument("--json", help="also write the figures as JSON")
    pr.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    """Print, per encoder, the held-out R² of a linear read-out of each renderer identity parameter."""
    import torch
    import torch.nn.functional as F

    from repsuite.faceswap.arcface import load_arcface
    from repsuite.faceswap.data import JudgeFaceDataset, read_judge_params
    from repsuite.faceswap.judging import linear_probe_r2
    from repsuite.faceswap.metrics import ArcFaceEmbedder

    meta = read_judge_params(args.faces)
    data = JudgeFaceDataset(args.faces, 64, sorted(meta["images"])[: args.limit], meta)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data))))
    results = {}
    for path in args.encoders:
        embed = ArcFaceEmbedder(load_arcface(path))
        with torch.no_grad():
            e = torch.cat([F.normalize(embed(x), dim=-1) for x in batch["image"].split(256)])  # (N, 512)
        r2 = linear_probe_r2(e, batch["identity"])
        results[path] = dict(zip(data.identity_fields, [round(v, 3) for v in r2.tolist()], strict=True))
    width = max(len(f) for f in data.identity_fields)
    print(
        f"linear-probe R² of each identity parameter ({len(data)} faces of {args.faces}, last 25% held out)"
    )
    print(" " * width + "".join(f"  enc{i}" for i in range(len(results))))
    for f in data.identity_fields:
        print(f.ljust(width) + "".join(f"  {r[f]:5.2f}" for r in results.values()))
    for i, path in enumerate(results):
        print(f"enc{i} = {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``repsuite faceswap``; returns the exit code."""
    ns = build_parser().parse_args(argv)
    return ns.func(ns)
