"""Exact resume: random-number-generator states travel with Lightning checkpoints.

Lightning restores weights, optimizer and loop counters from ``--ckpt_path`` but not the RNG states, so a
resumed run shuffles, drops out, augments and draws its scale K differently from an uninterrupted run with
the same seed. :class:`ExactResumeMixin` saves every rank's torch CPU (and current CUDA device) generator
state into the checkpoint and puts it back when ``fit`` resumes, which makes "stop after epoch k, resume"
end with the same weights as one run (tested). The states are plain uint8 tensors, so the checkpoint still
loads with ``torch.load(..., weights_only=True)``.

Randomness outside torch's generators (Python's ``random``, NumPy) is not captured; repsuite's own
pipelines use torch only.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["RNG_KEY", "ExactResumeMixin"]

RNG_KEY = "repsuite_rng_states"


class ExactResumeMixin:
    """LightningModule mixin: save per-rank RNG states in checkpoints, restore them when ``fit`` resumes."""

    def _gather_state(self, state: torch.Tensor) -> torch.Tensor:
        """(world_size, n) uint8 states of every rank (the collective runs on all ranks)."""
        if self.trainer.world_size == 1:
            return state[None]
        gathered = self.all_gather(state.to(self.device))  # (W, n) on every rank
        return gathered.cpu()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add ``repsuite_rng_states``: torch CPU (and CUDA) generator state of every rank."""
        if self._trainer is None:
            return
        entry: dict[str, Any] = {
            "world_size": self.trainer.world_size,
            "cpu": self._gather_state(torch.get_rng_state()),
        }
        if self.device.type == "cuda":
            entry["cuda"] = self._gather_state(torch.cuda.get_rng_state(self.device))
        checkpoint[RNG_KEY] = entry

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When fit resumes from ``checkpoint``, put this rank's generator states back."""
        entry = checkpoint.get(RNG_KEY)
        if entry is None or self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        if entry["world_size"] != self.trainer.world_size:
            rank_zero_warn(
                f"checkpoint saved with {entry['world_size']} processes, resuming with "
                f"{self.trainer.world_size}: RNG states are not restored, so the resumed run will not match "
                "an uninterrupted one exactly"
            )
            return
        rank = self.trainer.global_rank
        torch.set_rng_state(entry["cpu"][rank].cpu())
        if "cuda" in entry and self.device.type == "cuda":
            torch.cuda.set_rng_state(entry["cuda"][rank].cpu(), self.device)
