"""Face-swap losses (thesis §3.3.2), each a small module with its own weight.

* :class:`ReconstructionLoss` — L1 between swap and target, on same-identity pairs only (Eq. 3.8);
* :class:`IdentityLoss` — 1 − cos(ArcFace(swap), ArcFace(source)) (Eq. 3.9);
* :func:`generator_adversarial_loss` / :func:`discriminator_adversarial_loss` — non-saturating logistic GAN
  losses for the global and each component discriminator (Eq. 3.10); :func:`r1_penalty` optional;
* :class:`WeakFeatureMatchingLoss` — L1 between the global discriminator's last-layer features of the swap
  and of the target (Eq. 3.11, SimSwap);
* :class:`ShapeLoss` — beyond the thesis: HifiFace's shape-aware identity (Eq. 6), L1 between the face
  reconstruction of the swap and the fused coefficients (source's shape, target's pose and expression).

Default weights are the thesis's: λ_ID = 10, λ_Recon = 10, λ_adv = 1, λ_wkFM = 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IdentityLoss",
    "ReconstructionLoss",
    "ShapeLoss",
    "WeakFeatureMatchingLoss",
    "discriminator_adversarial_loss",
    "generator_adversarial_loss",
    "r1_penalty",
]


class ReconstructionLoss(nn.Module):
    """Mean L1 over the same-identity pairs of the batch (zero, with a graph, when there are none)."""

    def __init__(self, weight: float = 10.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, swap: Tensor, target: Tensor, same_identity: Tensor) -> Tensor:
        """Swaps and targets (B, 3, S, S), same_identity (B,) bool -> weighted scalar."""
        per_sample = (swap - target).abs().flatten(1).mean(1)  # (B,)
        mask = same_identity.to(per_sample.dtype)
        return self.weight * (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


class IdentityLoss(nn.Module):
    """1 − cosine similarity between identity embeddings of the swaps and of the sources."""

    def __init__(self, weight: float = 10.0) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, swap_embed: Tensor, source_embed: Tensor) -> Tensor:
        """Embeddings (B, D) -> weighted scalar."""
        cos = F.cosine_similarity(swap_embed.float(), source_embed.float(), dim=-1)
        return self.weight * (1 - cos).mean()


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss softplus(−D(fake)), averaged."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_adversarial_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic discriminator loss softplus(−D(real)) + softplus(D(fake)), averaged."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1: ‖∇_x D(x)‖² on real images (``real_images`` must require grad), averaged over the batch."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class WeakFeatureMatchingLoss(nn.Module):
    """Σ_{i=m}^{M} ‖D⁽ⁱ⁾(swap) − D⁽ⁱ⁾(target)‖₁ / (M − m + 1) over the last ``num_layers`` feature maps.

    Args:
        weight: λ_wkFM.
        num_layers: how many of the discriminator's last feature maps are matched ("weak": only the deepest).
    """

    def __init__(self, weight: float = 5.0, num_layers: int = 2) -> None:
        super().__init__()
        self.weight, self.num_layers = weight, num_layers

    def forward(self, fake_features: Sequence[Tensor], real_features: Sequence[Tensor]) -> Tensor:
        """Feature lists of the global D for swaps and targets (targets' are detached) -> weighted scalar."""
        pairs = list(zip(fake_features, real_features, strict=True))[-self.num_layers :]
        total = sum(F.l1_loss(f.float(), r.detach().float()) for f, r in pairs)
        return self.weight * total / len(pairs)


class ShapeLoss(nn.Module):
    """‖recon(swap) − (shape(source), pose/expression(target))‖₁ on standardised coefficients.

    HifiFace (Wang et al., IJCAI 2021, Eq. 6) compares 3D landmarks of the fused and the swap's 3DMM
    reconstructions; without a 3DMM basis the standardised coefficients are compared directly.

    Args:
        weight: λ_shape, the scale of the whole term.
        kept_weight: weight of each pose / expression coefficient relative to a shape coefficient in the
            weighted mean (1: a plain mean over all coefficients). The mean stays normalised, so raising it
            moves the pull from the source's shape towards the target's pose without changing λ_shape.
    """

    def __init__(self, weight: float = 10.0, kept_weight: float = 1.0) -> None:
        super().__init__()
        if kept_weight <= 0:
            raise ValueError(f"ShapeLoss: kept_weight must be > 0, got {kept_weight}")
        self.weight = weight
        self.kept_weight = kept_weight

    def forward(
        self, swap_shape: Tensor, swap_kept: Tensor, source_shape: Tensor, target_kept: Tensor
    ) -> Tensor:
        """Coefficients (B, n_shape) of swap / source, (B, n_kept) of swap / target -> weighted scalar."""
        shape_err = (swap_shape.float() - source_shape.detach().float()).abs().sum(dim=1)  # (B,)
        kept_err = (swap_kept.float() - target_kept.detach().float()).abs().sum(dim=1)  # (B,)
        total = swap_shape.shape[1] + self.kept_weight * swap_kept.shape[1]
        return self.weight * (shape_err + self.kept_weight * kept_err).mean() / total
