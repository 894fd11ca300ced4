"""Face-swap metrics (torchmetrics, DDP-safe): ID retrieval, ID cosine, pose and shape errors, FID features.

Every metric takes images and a pluggable ``nn.Module`` that turns them into what it compares:

* :class:`IDRetrieval` — % of swaps whose nearest source identity (cosine, over the mean embedding of each
  source identity seen) is their own source (FaceShifter / HifiFace protocol on FF++, thesis Table 3.1);
* :class:`IDCosine` — mean cosine between the swap's and the source's embeddings;
* :class:`PoseError` — mean L2 distance between (yaw, pitch, roll) of swap and target from a head-pose model;
* :class:`ShapeError` — mean L2 distance between 3DMM shape coefficients of swap and source;
* :class:`EmbeddingFeatures` wraps any embedding model for torchmetrics' ``FrechetInceptionDistance``
  (``feature=EmbeddingFeatures(model, dim)``), so FID needs no downloaded Inception weights.

Embedding models see aligned faces (B, 3, S, S) in [-1, 1]; :class:`ArcFaceEmbedder` crops them to ArcFace's
112×112 input first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from repsuite.faceswap.align import to_arcface_input

__all__ = ["ArcFaceEmbedder", "EmbeddingFeatures", "IDCosine", "IDRetrieval", "PoseError", "ShapeError"]


class ArcFaceEmbedder(nn.Module):
    """Aligned faces (B, 3, S, S) in [-1, 1] → ArcFace embeddings (B, 512), via the template crop."""

    def __init__(self, arcface: nn.Module) -> None:
        super().__init__()
        self.arcface = arcface

    def forward(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D)."""
        return self.arcface(to_arcface_input(faces, size=getattr(self.arcface, "input_size", 112)))


class IDRetrieval(Metric):
    """Top-1 identity retrieval of swaps among the source identities.

    Args:
        encoder: faces → embeddings (any ``nn.Module``; e.g. :class:`ArcFaceEmbedder`, ideally not the one
            the swapper was trained with).
    """

    full_state_update = False

    def __init__(self, encoder: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.__dict__["encoder"] = encoder  # used, not owned: kept out of this metric's state dict
        self.add_state("swap", default=[], dist_reduce_fx="cat")
        self.add_state("source", default=[], dist_reduce_fx="cat")
        self.add_state("identity", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, swaps: Tensor, sources: Tensor, source_identity: Tensor | None = None) -> None:
        """Swaps and their sources (B, 3, S, S); identity labels (B,) (−1 or None: each source its own)."""
        self.swap.append(F.normalize(self.encoder(swaps).float(), dim=-1))
        self.source.append(F.normalize(self.encoder(sources).float(), dim=-1))
        ids = source_identity if source_identity is not None else torch.full((swaps.shape[0],), -1)
        self.identity.append(ids.to(self.swap[-1].device).long())

    def compute(self) -> Tensor:
        """Retrieval accuracy in %."""
        swap, source, ids = dim_zero_cat(self.swap), dim_zero_cat(self.source), dim_zero_cat(self.identity)
        # unlabelled sources are identities of their own
        ids = torch.where(ids < 0, -1 - torch.arange(len(ids), device=ids.device), ids)
        classes, label = torch.unique(ids, return_inverse=True)
        gallery = torch.zeros(len(classes), source.shape[1], device=source.device).index_add_(
            0, label, source
        )
        pred = (swap @ F.normalize(gallery, dim=-1).T).argmax(dim=1)  # (N,)
        return 100.0 * (pred == label).float().mean()


class IDCosine(Metric):
    """Mean cosine similarity of swap and source embeddings."""

    full_state_update = False

    def __init__(self, encoder: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.__dict__["encoder"] = encoder  # used, not owned: kept out of this metric's state dict
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, swaps: Tensor, sources: Tensor) -> None:
        """Swaps and sources (B, 3, S, S)."""
        cos = F.cosine_similarity(self.encoder(swaps).float(), self.encoder(sources).float(), dim=-1)
        self.total += cos.double().sum()
        self.count += cos.numel()

    def compute(self) -> Tensor:
        """Mean cosine."""
        return (self.total / self.count.clamp(min=1)).float()


class _PairDistance(Metric):
    full_state_update = False

    def __init__(self, estimator: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.__dict__["estimator"] = estimator  # used, not owned
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, swaps: Tensor, reference: Tensor) -> None:
        """Swaps and the images they are compared with (B, 3, S, S)."""
        d = (self.estimator(swaps).float() - self.estimator(reference).float()).norm(dim=-1)
        self.total += d.double().sum()
        self.count += d.numel()

    def compute(self) -> Tensor:
        """Mean L2 distance."""
        return (self.total / self.count.clamp(min=1)).float()


class PoseError(_PairDistance):
    """Mean L2 distance of head pose (estimator: faces → (B, 3) yaw, pitch, roll) between swap and target."""


class ShapeError(_PairDistance):
    """Mean L2 distance of 3DMM shape coefficients (estimator: faces → (B, K)) between swap and source."""


class EmbeddingFeatures(nn.Module):
    """Adapter for torchmetrics' FID: uint8 images (B, 3, H, W) → ``model`` features of [-1, 1] faces."""

    def __init__(self, model: nn.Module, num_features: int) -> None:
        super().__init__()
        self.model, self.num_features = model, num_features

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, num_features) float64-safe features."""
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        return self.model(x).float()
