"""Evaluation of a face swapper over a folder of source/target pairs (what ``repsuite faceswap eval`` runs).

:func:`evaluate_swaps` returns ID retrieval / ID cosine (with any identity encoder), optional pose and shape
errors and FID, and — when the folder has ``ground_truth/`` (synthetic faces) — PSNR of the swaps against the
ground-truth swaps next to the two trivial baselines "copy the target" and "copy the source", plus the ID
retrieval of the ground-truth swaps themselves (the ceiling the encoder allows). With an independent judge
(:func:`open_judge`: a ``FaceJudgeModule`` checkpoint on synthetic faces, a second ArcFace on real ones) it
also reports whose identity the judge sees in the swaps — the source's or the target's — and pose /
expression errors, next to the same figures for the ground-truth swaps and both copy baselines.
:func:`swap_grid_pairs` picks the pairs shown in a swap grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from repsuite.faceswap.data import PairFolderDataset
from repsuite.faceswap.judging import SwapJudge, open_judge
from repsuite.faceswap.module import FaceSwapModule
from repsuite.faceswap.scores import SwapScores

__all__ = ["SwapJudge", "evaluate_swaps", "open_judge", "swap_grid_pairs"]


@torch.no_grad()
def evaluate_swaps(
    module: FaceSwapModule,
    pairs: PairFolderDataset,
    embedder: nn.Module | None = None,
    judge: SwapJudge | None = None,
    pose_estimator: nn.Module | None = None,
    shape_estimator: nn.Module | None = None,
    fid: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Swap every pair (identity of ``source/<name>`` onto ``target/<name>``) and score the swaps.

    Args:
        module: the swapper (its EMA generator when it keeps one).
        pairs: the pair folder, read at the swapper's resolution.
        embedder: faces (B, 3, S, S) → identity embeddings for ``id_retrieval`` / ``id_cosine``; the
            swapper's own training encoder when None.
        judge: an independent judge (:func:`open_judge`): whose identity it sees in each swap (source or
            target, among all identities of the folder), and pose / expression errors against the target's
            true attributes when the folder records them (else against the judge's reading of the target).
            Also reported for the ground-truth swaps and the copy-target / copy-source baselines.
        pose_estimator: faces → (B, 3) yaw/pitch/roll, compared between swap and target.
        shape_estimator: faces → (B, K) 3DMM shape coefficients, compared between swap and source.
        fid: FID of the swaps against the targets on ``embedder``'s features.
        batch_size: pairs per forward pass.

    Returns:
        ``pairs``, ``id_retrieval`` (%), ``chance_id_retrieval`` (%), ``id_cosine``; ``pose_error``,
        ``shape_error``, ``fid`` when asked; with ground truth ``psnr_swap``, ``psnr_copy_target``,
        ``psnr_copy_source`` (dB) and ``id_retrieval_ground_truth`` (%); with a judge ``judge``,
        ``judge_chance``, ``judge_source_top1``, ``judge_target_top1`` (%), ``judge_pose_error``,
        ``judge_expression_error`` and the same keys for ``judge_ground_truth_*``, ``judge_copy_target_*``,
        ``judge_copy_source_*``.
    """
    module = module.eval()
    embedder = embedder if embedder is not None else module.embedder
    scores = SwapScores(embedder, judge, True, pose_estimator, shape_estimator, fid)
    for batch in torch.utils.data.DataLoader(pairs, batch_size=batch_size):
        scores.update(module.swap(batch["source"], batch["target"]), batch)
    identities = {str(pairs.labels.get(n, {}).get("source_identity", n)) for n in pairs.names}
    results: dict[str, Any] = {"pairs": len(pairs), "chance_id_retrieval": 100.0 / len(identities)}
    results |= scores.results()
    if judge is not None:
        gallery = {
            int(lab[k]) for lab in pairs.labels.values() for k in ("source_identity", "target_identity")
        }
        results |= {"judge": judge.name, "judge_chance": 100.0 / max(1, len(gallery))}
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
