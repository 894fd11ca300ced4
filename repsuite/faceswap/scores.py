"""Every figure of a set of swaps, in one place.

What ``FaceSwapModule`` validation logs and what :func:`repsuite.faceswap.evaluate_swaps`
(``repsuite faceswap eval``) prints.

:class:`SwapScores` gathers, batch by batch, the training encoder's ID retrieval / cosine, PSNR against the
ground-truth swaps (synthetic faces) next to the copy-target / copy-source baselines, optional pose / shape
errors and FID, and an independent judge's verdicts (:class:`~repsuite.faceswap.judging.JudgeScores`).
All states are torchmetrics states, so the figures are reduced over processes under DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio

from repsuite.faceswap.judging import JudgeScores, SwapJudge
from repsuite.faceswap.metrics import IDCosine, IDRetrieval, PoseError, ShapeError

__all__ = ["SwapScores", "psnr"]

#: The images of a pair scored against the ground-truth swap: the swap and the two trivial baselines.
PSNR_CANDIDATES = ("swap", "copy_target", "copy_source")


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB of each image pair (B, 3, H, W) in [-1, 1] (peak-to-peak 2) -> (B,)."""
    return peak_signal_noise_ratio(a.float(), b.float(), data_range=2.0, reduction="none", dim=(1, 2, 3))


class SwapScores:
    """Accumulate the scores of swaps over batches of pairs.

    Args:
        embedder: faces (B, 3, S, S) -> embeddings for ``id_retrieval`` / ``id_cosine`` (and the ground-truth
            swaps' ``id_retrieval_ground_truth``): the swapper's training encoder unless told otherwise.
        judge: an independent judge (:func:`~repsuite.faceswap.judging.open_judge`), or None.
        judge_baselines: also judge the ground-truth swaps and both copies (the evaluation's table), not
            only the swaps (validation, where they would cost three more judge passes per batch).
        pose_estimator: faces -> (B, 3) yaw / pitch / roll, compared between swap and target.
        shape_estimator: faces -> (B, K) 3DMM shape, compared between swap and source.
        fid: FID of the swaps against the targets on ``embedder``'s features.
    """

    def __init__(
        self,
        embedder: nn.Module,
        judge: SwapJudge | None = None,
        judge_baselines: bool = True,
        pose_estimator: nn.Module | None = None,
        shape_estimator: nn.Module | None = None,
        fid: bool = False,
    ) -> None:
        self.retrieval, self.cosine = IDRetrieval(embedder), IDCosine(embedder)
        self.gt_retrieval = IDRetrieval(embedder)
        self.psnr = {c: MeanMetric() for c in PSNR_CANDIDATES}
        self.pose = PoseError(pose_estimator) if pose_estimator is not None else None
        self.shape = ShapeError(shape_estimator) if shape_estimator is not None else None
        self.fid = _fid(embedder) if fid else None
        self.judged = JudgeScores(judge) if judge is not None else None
        self.judge_baselines = judge_baselines
        self.with_gt = False

    def _metrics(self) -> list[Any]:
        optional = [self.pose, self.shape, self.fid]
        return [self.retrieval, self.cosine, self.gt_retrieval, *self.psnr.values(), *filter(None, optional)]

    @torch.no_grad()
    def update(self, swaps: Tensor, batch: dict[str, Any]) -> None:
        """Score one batch of swaps (B, 3, S, S).

        ``batch`` holds the pairs: ``source``, ``target``, labels, optionally ``ground_truth`` and the
        renderer's truth.
        """
        self.retrieval.update(swaps, batch["source"], batch["source_identity"])
        self.cosine.update(swaps, batch["source"])
        if self.pose is not None:
            self.pose.update(swaps, batch["target"])
        if self.shape is not None:
            self.shape.update(swaps, batch["source"])
        if self.fid is not None:
            self.fid.update((batch["target"] + 1) / 2, real=True)
            self.fid.update((swaps + 1) / 2, real=False)
        images = {"swap": swaps, "copy_target": batch["target"], "copy_source": batch["source"]}
        if "ground_truth" in batch:
            gt = batch["ground_truth"]
            self.with_gt = True
            self.gt_retrieval.update(gt, batch["source"], batch["source_identity"])
            for cand in PSNR_CANDIDATES:
                self.psnr[cand].update(psnr(images[cand], gt))
            images["ground_truth"] = gt
        if self.judged is not None:
            self.judged.update(images if self.judge_baselines else {"swap": swaps}, batch)

    def results(self) -> dict[str, float]:
        """The figures gathered so far.

        ``id_retrieval`` (%), ``id_cosine``; ``pose_error`` / ``shape_error`` / ``fid`` when asked; with
        ground truth ``psnr_swap`` / ``psnr_copy_target`` / ``psnr_copy_source`` (dB) and
        ``id_retrieval_ground_truth`` (%); with a judge its ``judge_*`` figures.
        """
        out = {"id_retrieval": self.retrieval.compute().item(), "id_cosine": self.cosine.compute().item()}
        for key, metric in (("pose_error", self.pose), ("shape_error", self.shape), ("fid", self.fid)):
            if metric is not None:
                out[key] = metric.compute().item()
        if self.with_gt:
            out |= {f"psnr_{c}": self.psnr[c].compute().item() for c in PSNR_CANDIDATES}
            out["id_retrieval_ground_truth"] = self.gt_retrieval.compute().item()
        if self.judged is not None:
            out |= self.judged.results()
        return out

    def to(self, device: torch.device | str) -> SwapScores:
        """Move the metric states (the networks they read through are moved by their owners)."""
        for metric in self._metrics():
            metric.to(device)
        if self.judged is not None:
            self.judged.to(device)
        return self

    def reset(self) -> None:
        """Clear every state for the next evaluation."""
        for metric in self._metrics():
            metric.reset()
        if self.judged is not None:
            self.judged.reset()
        self.with_gt = False


def _fid(embedder: nn.Module) -> Any:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from repsuite.faceswap.metrics import EmbeddingFeatures

    return FrechetInceptionDistance(feature=EmbeddingFeatures(embedder, 512), normalize=True)
