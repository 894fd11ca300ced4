"""Face-swap metrics (torchmetrics, DDP-safe): ID retrieval, ID cosine, pose and shape errors, FID features.

Every metric takes images and a pluggable ``nn.Module`` that turns them into what it compares:

* :class:`IDRetrieval` — % of swaps whose nearest source identity (cosine, over the mean embedding of each
  source identity seen) is their own source (FaceShifter / HifiFace protocol on FF++, thesis Table 3.1);
* :class:`IDCosine` — mean cosine between the swap's and the source's embeddings;
* :class:`PoseError` — mean L2 distance between (yaw, pitch, roll) of swap and target from a head-pose model;
* :class:`ShapeError` — mean L2 distance between 3DMM shape coefficients of swap and source;
* :class:`JudgedIdentity` — an independent judge's verdict: % of swaps whose nearest identity (Euclidean,
  over the mean embedding of each identity's sources) is their source's, and % where it is their target's;
* :class:`ParameterTransfer` — for a judge that reads interpretable identity parameters (the synthetic
  renderer's), how far each parameter of the swap moved from the target's value to the source's (0: kept
  the target's, 1: took the source's): which parts of an identity a swap carries and which it leaves;
* :class:`AttributeDistance` — mean L2 distance between an estimator's attributes (pose, expression) of the
  swap and the target's true attributes (synthetic faces) or the estimator's reading of the target;
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

__all__ = [
    "ArcFaceEmbedder",
    "AttributeDistance",
    "EmbeddingFeatures",
    "IDCosine",
    "IDRetrieval",
    "JudgedIdentity",
    "ParameterTransfer",
    "PoseError",
    "ShapeError",
]


class ArcFaceEmbedder(nn.Module):
    """Aligned faces (B, 3, S, S) in [-1, 1] → ArcFace embeddings (B, 512), via the template crop.

    With ``extra`` encoders (each with its own crop size and zoom) the embedding is the concatenation of every
    encoder's unit-length embedding, divided by √n: (B, 512·n), unit length, and its cosine to another such
    embedding is the mean of the encoders' cosines — so an identity loss on it asks all of them at once.
    """

    def __init__(self, arcface: nn.Module, extra: nn.ModuleList | None = None) -> None:
        super().__init__()
        self.arcface = arcface
        self.extra = extra if extra is not None and len(extra) else None

    @staticmethod
    def _embed(net: nn.Module, faces: Tensor) -> Tensor:
        size, zoom = getattr(net, "input_size", 112), getattr(net, "crop_zoom", 1.0)
        return net(to_arcface_input(faces, size=size, zoom=zoom))

    @property
    def dim(self) -> int:
        """Embedding width."""
        nets = [self.arcface, *(self.extra or [])]
        return sum(int(n.fc.out_features) if hasattr(n, "fc") else 512 for n in nets)

    def forward(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D)."""
        first = self._embed(self.arcface, faces)
        if self.extra is None:
            return first
        parts = [first, *(self._embed(n, faces) for n in self.extra)]
        joined = torch.cat([F.normalize(p.float(), dim=-1) for p in parts], dim=-1)  # (B, 512·n)
        return joined / len(parts) ** 0.5


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


class _MeanDistance(Metric):
    """Mean of L2 distances read through an estimator (faces → (B, K)); subclasses say what is compared."""

    full_state_update = False

    def __init__(self, estimator: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.__dict__["estimator"] = estimator  # used, not owned
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, a: Tensor, b: Tensor) -> None:
        d = (a.float() - b.float()).norm(dim=-1)  # (B,)
        self.total += d.double().sum()
        self.count += d.numel()

    def compute(self) -> Tensor:
        """Mean L2 distance."""
        return (self.total / self.count.clamp(min=1)).float()


class _PairDistance(_MeanDistance):
    @torch.no_grad()
    def update(self, swaps: Tensor, reference: Tensor) -> None:
        """Swaps and the images they are compared with (B, 3, S, S)."""
        self._add(self.estimator(swaps), self.estimator(reference))


class PoseError(_PairDistance):
    """Mean L2 distance of head pose (estimator: faces → (B, 3) yaw, pitch, roll) between swap and target."""


class ShapeError(_PairDistance):
    """Mean L2 distance of 3DMM shape coefficients (estimator: faces → (B, K)) between swap and source."""


class JudgedIdentity(Metric):
    """Whose identity an independent judge sees in each swap: the source's or the target's.

    The gallery holds one entry per identity (source or target) seen, the mean of the judge's embeddings of
    the *original* faces of that identity; a swap is assigned to the nearest entry by Euclidean distance.
    ``compute()`` returns ``{"source": %, "target": %}`` (top-1 hits of the swap's source / target identity).

    Args:
        judge: faces → embeddings compared by L2 distance (e.g. ``FaceJudge.identity_embedding``, or an
            ArcFace wrapped to give L2-normalised embeddings). Must not be the swapper's training encoder.
    """

    full_state_update = False

    def __init__(self, judge: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.__dict__["judge"] = judge  # used, not owned
        for name in ("swap", "source", "target", "source_id", "target_id"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(
        self,
        swaps: Tensor,
        sources: Tensor,
        targets: Tensor,
        source_id: Tensor,
        target_id: Tensor,
        embedded: bool = False,
    ) -> None:
        """Swaps, sources, targets (B, 3, S, S); identity labels (B,) of sources and targets (≥ 0).

        With ``embedded=True`` the first three are the judge's embeddings (B, D), already computed (a caller
        judging several candidates of the same pairs embeds their sources and targets once).
        """
        if not embedded:
            swaps, sources, targets = self.judge(swaps), self.judge(sources), self.judge(targets)
        if (source_id < 0).any() or (target_id < 0).any():
            raise ValueError(
                "JudgedIdentity: every pair needs source_identity and target_identity labels "
                "(identities.json in the pair folder)"
            )
        self.swap.append(swaps.float())
        self.source.append(sources.float())
        self.target.append(targets.float())
        self.source_id.append(source_id.long().to(self.swap[-1].device))
        self.target_id.append(target_id.long().to(self.swap[-1].device))

    def compute(self) -> dict[str, Tensor]:
        """``{"source": %, "target": %}``."""
        swap = dim_zero_cat(self.swap)
        faces = torch.cat([dim_zero_cat(self.source), dim_zero_cat(self.target)])  # (2N, D)
        src_id, tgt_id = dim_zero_cat(self.source_id), dim_zero_cat(self.target_id)
        classes, label = torch.unique(torch.cat([src_id, tgt_id]), return_inverse=True)
        counts = torch.zeros(len(classes), device=faces.device).index_add_(
            0, label, torch.ones_like(label, dtype=faces.dtype)
        )
        gallery = torch.zeros(len(classes), faces.shape[1], device=faces.device).index_add_(0, label, faces)
        gallery = gallery / counts[:, None]  # (identities, D)
        pred = torch.cdist(swap, gallery).argmin(dim=1)  # (N,)
        n = len(src_id)
        return {
            "source": 100.0 * (pred == label[:n]).float().mean(),
            "target": 100.0 * (pred == label[n:]).float().mean(),
        }


class AttributeDistance(_MeanDistance):
    """Mean L2 distance between the estimated attributes of swaps and reference attributes.

    Args:
        estimator: faces → (B, K) attributes (e.g. the judge's (yaw, pitch) or (mouth, smile)).
    """

    @torch.no_grad()
    def update(self, images: Tensor, reference: Tensor) -> None:
        """Images (B, 3, S, S) and their reference attributes (B, K) (the truth, or the target's estimate)."""
        self._add(self.estimator(images), reference)


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


class ParameterTransfer(Metric):
    """Per identity parameter, how far the swap moved from the target's reading to the source's.

    For each parameter k and pair, ``(swap_k − target_k) / (source_k − target_k)``; ``compute()`` returns
    the median over the pairs whose source and target differ in k by at least half the median difference
    (a ratio over a tiny difference is noise), so (K,) with 0 = the target's value kept, 1 = the source's
    taken. Updated with readings (B, K), e.g. a judge's standardised identity parameters.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("swap", "source", "target"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, swaps: Tensor, sources: Tensor, targets: Tensor) -> None:
        """Parameter readings (B, K) of the swaps, their sources and their targets."""
        self.swap.append(swaps.float())
        self.source.append(sources.float())
        self.target.append(targets.float())

    def compute(self) -> Tensor:
        """(K,) median transfer per parameter (NaN for a parameter no pair tells apart)."""
        swap, src, tgt = dim_zero_cat(self.swap), dim_zero_cat(self.source), dim_zero_cat(self.target)
        diff = src - tgt  # (N, K)
        usable = diff.abs() >= 0.5 * diff.abs().median(dim=0).values  # (N, K)
        ratio = torch.where(usable, (swap - tgt) / diff.where(usable, torch.ones_like(diff)), torch.nan)
        return ratio.nanmedian(dim=0).values
