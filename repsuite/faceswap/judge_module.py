"""``FaceJudgeModule``: train the independent judge of synthetic face swaps (:class:`FaceJudge`).

``repsuite fit --config configs/faceswap/judge_demo.yaml`` regresses the renderer's identity parameters and
attributes of ``ROOT/judge`` faces — identities drawn apart from the swapper's training faces, by another
architecture and input size than the identity encoder the swapper is trained against, in its own run.
``repsuite faceswap eval --id-judge CKPT`` and ``FaceSwapModule(id_judge_ckpt=...)`` read the checkpoint
with :func:`~repsuite.faceswap.judge.load_judge`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from repsuite.faceswap.judge import EXPRESSION_SLICE, POSE_SLICE, FaceJudge, FaceJudgeConfig
from repsuite.optim import adam_kwargs
from repsuite.resume import ExactResumeMixin

__all__ = ["FaceJudgeModule"]


class FaceJudgeModule(ExactResumeMixin, LightningModule):
    """Mean squared error on standardised identity parameters and attributes.

    Args:
        identity_dim, attribute_dim: parameter counts; the CLI links them from ``FaceJudgeDataModule``.
        input_size: the judge's input size (faces are resized to it).
        width: channels of the judge's first stage.
        mouth_branch: read the expression from a magnified mouth crop (see :class:`FaceJudgeConfig`).
        attribute_weight: weight of the attribute term next to the identity term.
        lr: AdamW learning rate (cosine decay over the run).
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        identity_dim: int = 18,
        attribute_dim: int = 8,
        input_size: int = 48,
        width: int = 32,
        attribute_weight: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        mouth_branch: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.judge = FaceJudge(FaceJudgeConfig(input_size, width, identity_dim, attribute_dim, mouth_branch))

    def on_fit_start(self) -> None:
        """Standardise by the training set's parameter statistics (saved in the judge's buffers)."""
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "train_parameters"):
            raise ValueError("FaceJudgeModule: needs FaceJudgeDataModule (faces with known parameters)")
        ident, attrs = dm.train_parameters()
        if ident.shape[1] != self.hparams.identity_dim or attrs.shape[1] != self.hparams.attribute_dim:
            raise ValueError(
                f"FaceJudgeModule: the data has {ident.shape[1]} identity / {attrs.shape[1]} attribute "
                f"parameters, the model was built for {self.hparams.identity_dim} / "
                f"{self.hparams.attribute_dim}"
            )
        if self.trainer.ckpt_path is None:  # a resumed run keeps the statistics it started with
            self.judge.set_statistics(ident.to(self.device), attrs.to(self.device))

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        j = self.judge
        ident, attrs = j.standardised(batch["image"])
        ident_t = (batch["identity"] - j.identity_mean) / j.identity_std
        attrs_t = (batch["attributes"] - j.attribute_mean) / j.attribute_std
        return {"identity": F.mse_loss(ident, ident_t), "attributes": F.mse_loss(attrs, attrs_t)}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Identity + weighted attribute MSE."""
        terms = self._losses(batch)
        loss = terms["identity"] + self.hparams.attribute_weight * terms["attributes"]
        n = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Standardised MSEs and mean absolute errors of identity, pose and expression (renderer units)."""
        n = batch["image"].shape[0]
        terms = self._losses(batch)
        ident, attrs = self.judge(batch["image"])
        errors = {
            "identity_mse": terms["identity"],
            "attribute_mse": terms["attributes"],
            "identity_mae": (ident - batch["identity"]).abs().mean(),
            "pose_mae": (attrs[:, POSE_SLICE] - batch["attributes"][:, POSE_SLICE]).abs().mean(),
            "expression_mae": (attrs[:, EXPRESSION_SLICE] - batch["attributes"][:, EXPRESSION_SLICE])
            .abs()
            .mean(),
        }
        self.log_dict({f"val/{k}": v for k, v in errors.items()}, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a cosine decay over the whole run."""
        params = list(self.parameters())
        opt = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, **adam_kwargs(params)
        )
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
