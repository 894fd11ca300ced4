"""A tiny LightningModule/DataModule pair that exercises the CLI, Trainer plumbing and repsuite.ops.

Task: every query row must predict the mean of its context rows, which one cross-attention layer can
learn. Small enough for DDP and mixed-precision runs on two CPU cores in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from repsuite.ops import MultiHeadCrossAttention


class ToyModule(LightningModule):
    def __init__(
        self, dim: int = 16, num_heads: int = 2, lr: float = 0.01, marker_dir: str | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.attn = MultiHeadCrossAttention(dim, num_heads)
        self.head = nn.Linear(dim, dim)
        self.seen_dtypes: set[str] = set()
        self.seen_samples = 0

    def on_fit_end(self) -> None:
        # One file per rank, so tests can tell how many processes trained and on how much data.
        if self.hparams.marker_dir:
            info = {
                "rank": self.global_rank,
                "world_size": self.trainer.world_size,
                "pid": os.getpid(),
                "samples": self.seen_samples,
                "dtypes": sorted(self.seen_dtypes),
            }
            path = Path(self.hparams.marker_dir) / f"rank{self.global_rank}.json"
            path.write_text(json.dumps(info))

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        return self.head(self.attn(x, ctx))

    def _loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        x, ctx, y = batch
        return nn.functional.mse_loss(self(x, ctx).float(), y)

    def training_step(self, batch, batch_idx):
        x, ctx, y = batch
        pred = self(x, ctx)
        self.seen_dtypes.add(str(pred.dtype))
        self.seen_samples += x.shape[0]
        loss = nn.functional.mse_loss(pred.float(), y)
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
