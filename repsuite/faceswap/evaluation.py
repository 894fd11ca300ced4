"""Evaluation of a face swapper over a folder of source/target pairs (what ``repsuite faceswap eval`` runs).

:func:`evaluate_swaps` returns ID retrieval / ID cosine (with any identity encoder), optional pose and shape
errors and FID, and — when the folder has ``ground_truth/`` (synthetic faces) — PSNR of the swaps against the
ground-truth swaps next to the two trivial baselines "copy the target" and "copy the source", plus the ID
retrieval of the ground-truth swaps themselves (the ceiling the encoder allows). :func:`swap_grid_pairs`
picks the pairs shown in a swap grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repsuite.faceswap.data import PairFolderDataset
from repsuite.faceswap.metrics import IDCosine, IDRetrieval, PoseError, ShapeError
from repsuite.faceswap.module import FaceSwapModule, psnr

__all__ = ["evaluate_swaps", "swap_grid_pairs"]


@torch.no_grad()
def evaluate_swaps(
    module: FaceSwapModule,
    pairs: PairFolderDataset,
    embedder: nn.Module | None = None,
    pose_estimator: nn.Module | None = None,
    shape_estimator: nn.Module | None = None,
    fid: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Swap every pair (identity of ``source/<name>`` onto ``target/<name>``) and score the swaps.

    Args:
        module: the swapper (its EMA generator when it keeps one).
        pairs: the pair folder, read at the swapper's resolution.
        embedder: faces (B, 3, S, S) → identity embeddings for the ID metrics; the swapper's own training
            encoder when None (an independent one is the fairer judge).
        pose_estimator: faces → (B, 3) yaw/pitch/roll, compared between swap and target.
        shape_estimator: faces → (B, K) 3DMM shape coefficients, compared between swap and source.
        fid: FID of the swaps against the targets on ``embedder``'s features.
        batch_size: pairs per forward pass.

    Returns:
        ``pairs``, ``id_retrieval`` (%), ``chance_id_retrieval`` (%), ``id_cosine``; ``pose_error``,
        ``shape_error``, ``fid`` when asked; with ground truth ``psnr_swap``, ``psnr_copy_target``,
        ``psnr_copy_source`` (dB) and ``id_retrieval_ground_truth`` (%).
    """
    embedder = embedder if embedder is not None else module.embedder
    module = module.eval()
    retrieval, cosine, gt_retrieval = IDRetrieval(embedder), IDCosine(embedder), IDRetrieval(embedder)
    pose = PoseError(pose_estimator) if pose_estimator is not None else None
    shape = ShapeError(shape_estimator) if shape_estimator is not None else None
    fid_metric = None
    if fid:
        from torchmetrics.image.fid import FrechetInceptionDistance

        from repsuite.faceswap.metrics import EmbeddingFeatures

        fid_metric = FrechetInceptionDistance(feature=EmbeddingFeatures(embedder, 512), normalize=True)
    sums = {"swap": 0.0, "copy_target": 0.0, "copy_source": 0.0}
    with_gt = 0
    for batch in torch.utils.data.DataLoader(pairs, batch_size=batch_size):
        swaps = module.swap(batch["source"], batch["target"])
        retrieval.update(swaps, batch["source"], batch["source_identity"])
        cosine.update(swaps, batch["source"])
        if pose is not None:
            pose.update(swaps, batch["target"])
        if shape is not None:
            shape.update(swaps, batch["source"])
        if fid_metric is not None:
            fid_metric.update((batch["target"] + 1) / 2, real=True)
            fid_metric.update((swaps + 1) / 2, real=False)
        if "ground_truth" in batch:
            gt, n = batch["ground_truth"], swaps.shape[0]
            gt_retrieval.update(gt, batch["source"], batch["source_identity"])
            for key, img in (
                ("swap", swaps),
                ("copy_target", batch["target"]),
                ("copy_source", batch["source"]),
            ):
                sums[key] += psnr(img, gt).item() * n
            with_gt += n
    identities = {str(pairs.labels.get(n, {}).get("source_identity", n)) for n in pairs.names}
    results: dict[str, Any] = {
        "pairs": len(pairs),
        "id_retrieval": retrieval.compute().item(),
        "chance_id_retrieval": 100.0 / len(identities),  # top-1 among the distinct source identities
        "id_cosine": cosine.compute().item(),
    }
    if pose is not None:
        results["pose_error"] = pose.compute().item()
    if shape is not None:
        results["shape_error"] = shape.compute().item()
    if fid_metric is not None:
        results["fid"] = fid_metric.compute().item()
    if with_gt:
        results |= {f"psnr_{k}": v / with_gt for k, v in sums.items()}
        results["id_retrieval_ground_truth"] = gt_retrieval.compute().item()
    return results


def swap_grid_pairs(pairs: PairFolderDataset, k: int) -> list[int]:
    """Indices of up to ``k`` pairs whose sources are distinct identities (a varied grid header)."""
    picked, seen = [], set()
    for i, name in enumerate(pairs.names):
        ident = pairs.labels.get(name, {}).get("source_identity", name)
        if ident not in seen:
            seen.add(ident)
            picked.append(i)
        if len(picked) == k:
            break
    return picked
