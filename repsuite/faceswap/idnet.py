"""``IdentityModule``: train an ArcFace identity encoder on identity folders (users without official weights).

``repsuite fit --config configs/faceswap/idnet_demo.yaml --data.vggface2_root DIR`` trains an IResNet with
the additive-angular-margin head on ``FaceIdentityDataModule`` faces (cropped to 112×112 by the 5-point
template); the checkpoint's ``backbone.*`` weights load with :func:`repsuite.faceswap.load_arcface`, which
is what ``FaceSwapModule(id_encoder_ckpt=...)`` calls.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from repsuite.faceswap.align import to_arcface_input
from repsuite.faceswap.arcface import ArcMarginHead, iresnet
from repsuite.optim import adam_kwargs
from repsuite.resume import ExactResumeMixin

__all__ = ["IdentityModule"]

NUM_CLASSES_KEY = "idnet_num_classes"


class IdentityModule(ExactResumeMixin, LightningModule):
    """IResNet + ArcFace margin head, trained with cross-entropy on margin logits.

    Args:
        num_classes: identities; the CLI links it from ``FaceIdentityDataModule.num_classes``.
        depth: IResNet depth (18, 34, 50, 100).
        num_features: embedding width (512).
        scale: ArcFace s (64).
        margin: ArcFace m (0.5).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        dropout: dropout before the embedding layer.
        input_size: ArcFace crop size (112 as published; 64 makes CPU demos ~3× cheaper).
        crop_zoom: template zoom of the crop (1 as published: the inner face; < 1 also shows hair and the
            face outline, which a swapper trained against this encoder can then transfer).
        augment: training faces are randomly flipped and shifted / scaled by up to this fraction (0: none).
            An encoder that must recognise a face however it is framed answers a swapper's identity loss
            with gradients about the face, not about its exact pixels.
        augment_colour: training faces get random hue / saturation / brightness / contrast changes of up to
            this strength (0: none), so the encoder cannot tell identities apart by colour alone and must
            also read the face's geometry (outline, eye size and spacing).
        augment_blur: training faces are blurred by a Gaussian of a random width up to this sigma (pixels
            of the face at the data's resolution; 0: none). A swapper's early outputs are blurry: an
            encoder that never saw blur embeds them by their blur, not their identity, and its identity
            loss then asks the swapper for sharpness instead of the source's face.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        depth: int = 18,
        num_features: int = 512,
        scale: float = 64.0,
        margin: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        dropout: float = 0.0,
        input_size: int = 112,
        crop_zoom: float = 1.0,
        augment: float = 0.0,
        augment_colour: float = 0.0,
        augment_blur: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = iresnet(depth, num_features, dropout, input_size)
        self.backbone.crop_zoom = crop_zoom
        self.head: ArcMarginHead | None = None
        self._augment: torch.nn.Module | None = None
        if num_classes is not None:
            self._build_head(num_classes)

    def _build_head(self, num_classes: int) -> None:
        h = self.hparams
        self.head = ArcMarginHead(h.num_features, num_classes, h.scale, h.margin)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def setup(self, stage: str) -> None:
        """Take the number of identities from the DataModule when it was not given."""
        if self.head is None:
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "num_classes"):
                raise ValueError(
                    "IdentityModule: `num_classes` is not set and the DataModule does not provide it"
                )
            self._build_head(int(dm.num_classes))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the head's size: read from the data at setup, it is not among the hyper-parameters."""
        super().on_save_checkpoint(checkpoint)
        if self.head is not None:
            checkpoint[NUM_CLASSES_KEY] = self.head.weight.shape[0]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the head from the saved size when the hyper-parameters lack it."""
        super().on_load_checkpoint(checkpoint)
        if self.head is None and NUM_CLASSES_KEY in checkpoint:
            self._build_head(int(checkpoint[NUM_CLASSES_KEY]))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned faces (B, 3, S, S) in [-1, 1] -> embeddings (B, num_features)."""
        h = self.hparams
        return self.backbone(to_arcface_input(faces, size=h.input_size, zoom=h.crop_zoom))

    def _augmented(self, faces: torch.Tensor) -> torch.Tensor:
        a, c, b = self.hparams.augment, self.hparams.augment_colour, self.hparams.augment_blur
        if not (a or c or b):
            return faces
        if self._augment is None:
            import kornia.augmentation as K

            steps: list[torch.nn.Module] = []
            if a:
                steps += [K.RandomHorizontalFlip(), K.RandomAffine(degrees=0.0, translate=(a, a),
                                                                   scale=(1 - a, 1 + a), p=1.0,
                                                                   padding_mode="border")]  # fmt: skip
            if c:
                steps.append(K.ColorJiggle(brightness=c, contrast=c, saturation=c, hue=min(0.5, c), p=1.0))
            if b:  # half the faces stay sharp; the kernel covers +-3 sigma
                k = 2 * math.ceil(3 * b) + 1
                steps.append(K.RandomGaussianBlur((k, k), (0.1, b), p=0.5))
            self._augment = torch.nn.Sequential(*steps)
        x = (faces.float() + 1) / 2  # kornia's colour ops work on [0, 1]
        return (self._augment(x) * 2 - 1).to(faces.dtype)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Margin cross-entropy (on augmented faces when any ``augment*`` is set)."""
        logits = self.head(self(self._augmented(batch["image"])), batch["label"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Closed-set identity accuracy of held-out faces (cosine to the class centres, no margin)."""
        logits = self.head(self(batch["image"]))
        self.val_acc.update(logits.argmax(1), batch["label"])
        self.log(
            "val/loss",
            F.cross_entropy(logits, batch["label"]),
            batch_size=len(batch["label"]),
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        """Log ``val/accuracy`` (%)."""
        self.log("val/accuracy", 100 * self.val_acc.compute())
        self.val_acc.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW on the backbone and the head."""
        params = list(self.parameters())
        return torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, **adam_kwargs(params)
        )
