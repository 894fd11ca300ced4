"""``FaceReconModule``: train the face-reconstruction network of shape-aware identity (:class:`FaceRecon`).

``repsuite fit --config configs/faceswap/recon_demo.yaml`` regresses the chosen renderer parameters (face
shape, pose, expression) of ``ROOT/recon`` faces; ``FaceSwapModule(shape_ckpt=...)`` reads the checkpoint
with :func:`~repsuite.faceswap.recon.load_face_recon` for its shape loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from repsuite.faceswap.recon import KEPT_FIELDS, SHAPE_FIELDS, FaceRecon, FaceReconConfig
from repsuite.optim import adam_kwargs
from repsuite.resume import ExactResumeMixin

__all__ = ["FaceReconModule"]


class FaceReconModule(ExactResumeMixin, LightningModule):
    """Mean squared error on the standardised shape and pose / expression coefficients.

    Args:
        backbone: timm model name of the network (random init).
        input_size: faces are resized to this.
        shape_fields: identity parameters regressed (the data's ``identity_fields`` must hold them).
        kept_fields: attributes regressed (the data's ``attribute_fields`` must hold them).
        augment_blur: half the training faces are blurred by a Gaussian of sigma up to this (pixels), so the
            network also reads blurry faces, as a swapper's early outputs are (0: off).
        lr: AdamW learning rate (cosine decay over the run).
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        input_size: int = 64,
        shape_fields: list[str] = list(SHAPE_FIELDS),  # noqa: B006 (LightningCLI reads the default)
        kept_fields: list[str] = list(KEPT_FIELDS),  # noqa: B006
        augment_blur: float = 0.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.recon = FaceRecon(FaceReconConfig(backbone, input_size, tuple(shape_fields), tuple(kept_fields)))
        self._columns: tuple[Tensor, Tensor] | None = None

    def _select(self, ident: Tensor, attrs: Tensor) -> Tensor:
        """The regressed targets (B, n_shape + n_kept) from the data's identity / attribute vectors."""
        if self._columns is None:
            dm = self.trainer.datamodule if self._trainer is not None else None
            if dm is None or not hasattr(dm, "fields"):
                raise ValueError("FaceReconModule: needs FaceReconDataModule (faces with known parameters)")
            id_names, attr_names = dm.fields
            cols = []
            for wanted, have, kind in (
                (self.recon.cfg.shape_fields, id_names, "identity_fields"),
                (self.recon.cfg.kept_fields, attr_names, "attribute_fields"),
            ):
                missing = [f for f in wanted if f not in have]
                if missing:
                    raise ValueError(
                        f"FaceReconModule: {missing} not in the data's {kind} {have} (params.json)"
                    )
                cols.append(torch.tensor([have.index(f) for f in wanted]))
            self._columns = (cols[0], cols[1])
        i, a = self._columns
        return torch.cat([ident[:, i.to(ident.device)], attrs[:, a.to(attrs.device)]], dim=1)

    def on_fit_start(self) -> None:
        """Standardise by the training set's statistics (saved in the network's buffers)."""
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "train_parameters"):
            raise ValueError("FaceReconModule: needs FaceReconDataModule (faces with known parameters)")
        if self.trainer.ckpt_path is None:  # a resumed run keeps the statistics it started with
            self.recon.set_statistics(self._select(*dm.train_parameters()).to(self.device))

    def _blur(self, images: Tensor) -> Tensor:
        sigma_max = self.hparams.augment_blur
        if not sigma_max:
            return images
        import kornia.filters as KF

        n = images.shape[0]
        sigma = torch.rand(n, device=images.device) * sigma_max
        blurred = KF.gaussian_blur2d(images, (7, 7), torch.stack([sigma, sigma], 1).clamp(min=1e-3))
        keep = (torch.rand(n, device=images.device) < 0.5).view(n, 1, 1, 1)
        return torch.where(keep, images, blurred)

    def _loss(self, images: Tensor, batch: dict[str, Any]) -> Tensor:
        target = (self._select(batch["identity"], batch["attributes"]) - self.recon.mean) / self.recon.std
        shape, kept = self.recon.standardised(images)
        return F.mse_loss(torch.cat([shape, kept], dim=1), target)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """MSE on standardised coefficients."""
        loss = self._loss(self._blur(batch["image"]), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Standardised MSE and each coefficient's R² (per batch, averaged over the batches)."""
        n = batch["image"].shape[0]
        self.log("val/mse", self._loss(batch["image"], batch), batch_size=n, sync_dist=True)
        target = self._select(batch["identity"], batch["attributes"])
        pred = self.recon(batch["image"])
        # R² per field over the batch: what a user needs to know is which fields the network reads
        r2 = 1 - ((pred - target) ** 2).mean(0) / target.var(0, unbiased=False).clamp(min=1e-12)
        per_field = {f"val/r2_{f}": v for f, v in zip(self.recon.fields, r2, strict=True)}
        self.log_dict(per_field, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a cosine decay over the whole run."""
        h = self.hparams
        params = list(self.parameters())
        opt = torch.optim.AdamW(params, lr=h.lr, weight_decay=h.weight_decay, **adam_kwargs(params))
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
