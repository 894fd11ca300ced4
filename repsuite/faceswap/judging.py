"""Independent judging of face swaps: whose identity a network outside training sees, pose and expression.

:func:`open_judge` reads a judge from a checkpoint — a ``FaceJudgeModule`` checkpoint (synthetic faces:
identity, pose, expression) or an ArcFace ``backbone.pth`` other than the training one (identity only) —
and :class:`JudgeScores` holds the judge's metrics for the swaps and for the references (ground-truth swaps,
copy the target, copy the source). Both ``repsuite faceswap eval`` and ``FaceSwapModule``'s validation use
them; :func:`check_independent` refuses a judge that is the training encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repsuite.checkpoints import CheckpointError, file_sha256
from repsuite.faceswap.arcface import load_arcface
from repsuite.faceswap.judge import EXPRESSION_SLICE, POSE_SLICE, JudgeView, load_judge
from repsuite.faceswap.metrics import ArcFaceEmbedder, AttributeDistance, JudgedIdentity, ParameterTransfer
from repsuite.faceswap.synthetic import IDENTITY_FIELDS

__all__ = ["JudgeScores", "SwapJudge", "check_independent", "linear_probe_r2", "open_judge"]


@dataclass
class SwapJudge:
    """An independent judge: identity embeddings (compared by L2) and optional pose / expression readings.

    Build one with :func:`open_judge` from a checkpoint that took no part in the swapper's training.
    """

    identity: nn.Module
    pose: nn.Module | None = None
    expression: nn.Module | None = None
    name: str = "judge"
    #: names of the identity reading's dimensions when they are interpretable parameters (a FaceJudge reads
    #: the renderer's ``IDENTITY_FIELDS``); enables the per-parameter transfer figures
    identity_fields: tuple[str, ...] | None = None

    def modules(self) -> list[nn.Module]:
        """The judge's networks (to move them to a device)."""
        return [m for m in (self.identity, self.pose, self.expression) if m is not None]


class _UnitEmbedder(nn.Module):
    """Faces -> L2-normalised embeddings (L2 distance between them orders like cosine)."""

    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D) unit vectors."""
        return F.normalize(self.embedder(faces).float(), dim=-1)


def open_judge(path: str | Path) -> SwapJudge:
    """A judge from a ``FaceJudgeModule`` checkpoint (identity, pose, expression) or an ArcFace (identity).

    Raises:
        CheckpointError: the file is neither.
    """
    try:
        judge = load_judge(path)
    except CheckpointError as judge_err:
        try:
            net = load_arcface(path)
        except CheckpointError as arc_err:
            raise CheckpointError(
                f"{path}: neither a FaceJudgeModule checkpoint ({judge_err}) nor an ArcFace ({arc_err})"
            ) from arc_err
        return SwapJudge(_UnitEmbedder(ArcFaceEmbedder(net)), name=f"ArcFace {Path(path).name}")
    views = {v: JudgeView(judge, v) for v in ("identity", "pose", "expression")}
    return SwapJudge(**views, name=f"FaceJudge {Path(path).name}", identity_fields=IDENTITY_FIELDS)


#: The images judged for each pair: the swap and, on pair folders with ground truth, the references.
_CANDIDATES = ("swap", "ground_truth", "copy_target", "copy_source")


class JudgeScores:
    """The judge's metrics for every candidate image of a pair (swap, ground truth, copies)."""

    def __init__(self, judge: SwapJudge) -> None:
        self.judge = judge
        self.identity = {c: JudgedIdentity(judge.identity) for c in _CANDIDATES}
        self.pose = self._distances(judge.pose)
        self.expression = self._distances(judge.expression)
        fields = judge.identity_fields
        self.transfer = {c: ParameterTransfer() for c in ("swap", "ground_truth")} if fields else {}
        self.seen: set[str] = set()

    @staticmethod
    def _distances(reading: nn.Module | None) -> dict[str, AttributeDistance]:
        return {c: AttributeDistance(reading) for c in _CANDIDATES} if reading is not None else {}

    def update(self, images: dict[str, Tensor], batch: dict[str, Any]) -> None:
        """Judge each candidate (``swap``, ``ground_truth``, ``copy_target``, ``copy_source``) of a batch."""
        ids = batch["source_identity"], batch["target_identity"]
        with torch.no_grad():  # the sources, targets and references are the same for every candidate
            src, tgt = self.judge.identity(batch["source"]), self.judge.identity(batch["target"])
            truth = batch.get("target_attributes")
            refs = [
                (metric, truth[:, sl] if truth is not None else reading(batch["target"]))
                for metric, reading, sl in ((self.pose, self.judge.pose, POSE_SLICE),
                                            (self.expression, self.judge.expression, EXPRESSION_SLICE))
                if metric
            ]  # fmt: skip
        for cand, img in images.items():
            self.seen.add(cand)
            reading = self.judge.identity(img)
            self.identity[cand].update(reading, src, tgt, *ids, embedded=True)
            if cand in self.transfer:
                self.transfer[cand].update(reading, src, tgt)
            for metric, ref in refs:
                metric[cand].update(img, ref)

    def to(self, device: torch.device | str) -> JudgeScores:
        """Move the metric states (the judge itself is moved by its owner)."""
        for group in (self.identity, self.pose, self.expression, self.transfer):
            for metric in group.values():
                metric.to(device)
        return self

    def reset(self) -> None:
        """Clear every metric for the next evaluation."""
        for group in (self.identity, self.pose, self.expression, self.transfer):
            for metric in group.values():
                metric.reset()
        self.seen.clear()

    def results(self) -> dict[str, float]:
        """``judge_source_top1`` … for the swaps, ``judge_<candidate>_…`` for the references.

        With a judge of interpretable parameters also ``judge_transfer_<field>`` (and
        ``judge_ground_truth_transfer_<field>``): :class:`~repsuite.faceswap.metrics.ParameterTransfer`.
        """
        out: dict[str, float] = {}
        for cand in (c for c in _CANDIDATES if c in self.seen):
            verdict = self.identity[cand].compute()
            prefix = "judge" if cand == "swap" else f"judge_{cand}"
            out[f"{prefix}_source_top1"] = verdict["source"].item()
            out[f"{prefix}_target_top1"] = verdict["target"].item()
            if self.pose:
                out[f"{prefix}_pose_error"] = self.pose[cand].compute().item()
            if self.expression:
                out[f"{prefix}_expression_error"] = self.expression[cand].compute().item()
            if cand in self.transfer:
                values = self.transfer[cand].compute().tolist()
                out |= {
                    f"{prefix}_transfer_{f}": v
                    for f, v in zip(self.judge.identity_fields, values, strict=True)
                }
        return out


def check_independent(
    judge_path: str | Path, encoder_path: str | Path, encoder: nn.Module, judge: SwapJudge
) -> None:
    """Refuse a judge that is a network the swapper trains against (its identity encoder, its shape network).

    The same file, or any shared weight tensor, is refused.

    Raises:
        ValueError: naming both files and what they share.
    """
    judge_path, encoder_path = Path(judge_path), Path(encoder_path)
    if judge_path.resolve() == encoder_path.resolve() or file_sha256(judge_path) == file_sha256(encoder_path):
        raise ValueError(
            f"id judge {judge_path} is the swapper's training network {encoder_path}: a judge must take no "
            "part in training (train one with configs/faceswap/judge_demo.yaml, or use another ArcFace)"
        )
    enc = {}
    for t in encoder.state_dict().values():
        if t.is_floating_point() and t.numel() > 1 and t.unique().numel() > 1:  # skip constant init values
            enc.setdefault(tuple(t.shape), []).append(t)
    for module in judge.modules():
        for name, t in module.state_dict().items():
            if any(torch.equal(t, e) for e in enc.get(tuple(t.shape), [])):
                raise ValueError(
                    f"id judge {judge_path}: weight {name} {tuple(t.shape)} is also in the training network "
                    f"{encoder_path}; a judge must share no weights with it"
                )


def linear_probe_r2(
    embeddings: Tensor, targets: Tensor, train_fraction: float = 0.75, ridge: float = 1e-2
) -> Tensor:
    """How much of each target a linear read-out of the embeddings explains, on held-out rows.

    Ridge regression (with a bias) fitted on the first ``train_fraction`` of the rows of ``embeddings``
    (N, D) → ``targets`` (N, F); returns R² per target (F,) on the remaining rows (1: fully readable; ≤ 0: no
    better than the mean). Used to ask which identity parameters an identity encoder carries at all: a
    swapper can only transfer what its encoder's embedding holds.
    """
    n = int(len(embeddings) * train_fraction)
    if not 2 <= n <= len(embeddings) - 2:
        raise ValueError(f"linear_probe_r2: {len(embeddings)} rows are too few to fit and test a probe")
    x = torch.cat([embeddings.double(), torch.ones(len(embeddings), 1, dtype=torch.double)], dim=1)
    y = targets.double()
    gram = x[:n].T @ x[:n] + ridge * torch.eye(x.shape[1], dtype=torch.double)
    weights = torch.linalg.solve(gram, x[:n].T @ y[:n])  # (D + 1, F)
    residual = ((x[n:] @ weights - y[n:]) ** 2).mean(0)
    return (1 - residual / y[n:].var(0, unbiased=False).clamp(min=1e-12)).float()
