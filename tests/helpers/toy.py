"""A tiny LightningModule/DataModule pair that exercises the CLI, Trainer plumbing and repsuite.ops.

Task: every query row must predict the mean of its context rows, which one cross-attention layer can
learn. Small enough for DDP and mixed-precision runs on two CPU cores in seconds.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from repsuite.ops import MultiHeadCrossAttention


class ToyModule(LightningModule):
    def __init__(self, dim: int = 16, num_heads: int = 2, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.attn = MultiHeadCrossAttention(dim, num_heads)
        self.head = nn.Linear(dim, dim)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        return self.head(self.attn(x, ctx))

    def _loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, ctx, y = batch
        return nn.functional.mse_loss(self(x, ctx), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        x, ctx, _ = batch
        return self(x, ctx)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class ToyDataModule(LightningDataModule):
    def __init__(
        self, num_samples: int = 64, dim: int = 16, seq_len: int = 10, ctx_len: int = 6, batch_size: int = 8
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        h = self.hparams
        ctx = torch.randn(h.num_samples, h.ctx_len, h.dim, generator=g)
        x = torch.randn(h.num_samples, h.seq_len, h.dim, generator=g)
        y = ctx.mean(dim=1, keepdim=True).expand(-1, h.seq_len, -1).contiguous()
        self.dataset = TensorDataset(x, ctx, y)

    def _loader(self, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(True)

    def val_dataloader(self):
        return self._loader(False)

    def test_dataloader(self):
        return self._loader(False)

    def predict_dataloader(self):
        return self._loader(False)
