"""``NLQModule``: training, official-metric validation and prediction of the NLQ model with Lightning."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from repsuite.nlq.data import bins_to_seconds
from repsuite.nlq.decoding import joint_topk, merge_candidates, ranked_windows
from repsuite.nlq.losses import NLQLoss
from repsuite.nlq.metrics import NLQRecall
from repsuite.nlq.model import NLQModel, NLQModelConfig, NLQOutput
from repsuite.optim import adam_kwargs
from repsuite.resume import ExactResumeMixin

__all__ = ["NLQModule"]

#: Checkpoint entry with the network's :class:`NLQModelConfig` (as a dict), widths included.
MODEL_CONFIG_KEY = "nlq_model_config"
#: NLQModelConfig fields that change how saved weights are used, not what they are: free to differ on load.
BEHAVIOUR_FIELDS = ("dropout", "input_dropout", "npm_normalize", "segment_by")


def _differs(a: Any, b: Any) -> bool:
    """Config values compared across a checkpoint round trip (tuples come back as lists)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    return a != b


class NLQModule(ExactResumeMixin, LightningModule):
    """The thesis's NLQ model (chapter 2) as a LightningModule.

    Checkpoints carry every rank's RNG state, so ``fit --ckpt_path`` resumes exactly (same weights and
    metrics as an uninterrupted run with the same seed).

    Args:
        video_dim: video feature width. The CLI links it from ``Ego4DNLQDataModule.video_dim`` (read from
            the feature files); ``None`` (Python use) reads it from the trainer's DataModule at setup.
        text_dim: precomputed text feature width, 0 for token ids; linked / read like ``video_dim``.
        hidden, num_heads, ffn, num_layers, dropout, input_dropout: model sizes (author: 256, 8, 1024, 3,
            0.1, 0.5).
        attention: ``"cross"`` (thesis) or ``"self"`` (Moment-DETR-style variant of Table 2.1).
        scales: K values; one is drawn per training batch.
        max_video_len, text_encoder_layers, span_layers, contrast_dim, npm_normalize, segment_by: see
            :class:`NLQModelConfig` (``segment_by="batch"`` reproduces the release's batch-dependent split).
        span_weight, highlight_weight, saliency_weight, npm_weight, contrastive_weight: loss weights (0 turns
            a term off, e.g. ``contrastive_weight=0`` for "Ours-base").
        npm_label: which segments the NPM learns to call positive: ``"overlap"`` (Eq. 2.5, those intersecting
            the answer) or ``"start_end"`` (the author's release: those holding its start or end bin).
        temperature: contrastive τ.
        lr, weight_decay: AdamW.
        top_k: windows kept per query.
        max_span: optional cap on window length in bins.
        inference_scales: K values pooled at inference (default: ``scales``).
        deduplicate: drop identical windows when pooling scales.
        nms_iou: temporal NMS threshold when pooling scales (0.5): the top-k are distinct answers. None is
            the author's release (plain pooling by score; its five windows are often near-copies of one).
        candidates_per_scale: (start, end) pairs each scale proposes before pooling (default: 4·top_k with
            NMS, so enough survive it, top_k being at least the module's, so asking for fewer answers
            returns the first of the same list; top_k without, as the release).
        init_from: an NLQModule checkpoint whose network weights start this run (weights only: no optimizer
            state, step count or hyper-parameters), e.g. the NaQ pre-training before fine-tuning on NLQ
            (``configs/nlq/naq_finetune.yaml``). Not applied when resuming with ``--ckpt_path``.
        compile: run the network's forward through ``torch.compile`` (TorchInductor) during training and
            evaluation. Weights, checkpoints and results are those of the plain module; the first steps at
            each K pay the compilation. Its gain is measured by ``benchmarks/nlq.py``.
    """

    def __init__(
        self,
        video_dim: int | None = None,
        text_dim: int | None = None,
        hidden: int = 256,
        num_heads: int = 8,
        ffn: int = 1024,
        num_layers: int = 3,
        dropout: float = 0.1,
        input_dropout: float = 0.5,
        attention: Literal["cross", "self"] = "cross",
        scales: tuple[int, ...] = (2, 3, 4, 5, 6),
        max_video_len: int = 600,
        text_encoder_layers: int = 2,
        span_layers: int = 4,
        contrast_dim: int = 64,
        npm_normalize: bool = False,
        segment_by: Literal["clip", "batch"] = "clip",
        span_weight: float = 1.0,
        highlight_weight: float = 20.0,
        saliency_weight: float = 1.0,
        npm_weight: float = 1.0,
        npm_label: Literal["overlap", "start_end"] = "overlap",
        contrastive_weight: float = 1.0,
        temperature: float = 0.07,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        top_k: int = 5,
        max_span: int | None = None,
        inference_scales: tuple[int, ...] | None = None,
        deduplicate: bool = False,
        nms_iou: float | None = 0.5,
        candidates_per_scale: int | None = None,
        init_from: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: NLQModel | None = None
        self.criterion = NLQLoss(
            span_weight,
            highlight_weight,
            saliency_weight,
            npm_weight,
            contrastive_weight,
            temperature=temperature,
            npm_label=npm_label,
        )
        self.val_metric = NLQRecall((0.3, 0.5), (1, 5), deduplicate=True)
        self.test_metric = NLQRecall((0.3, 0.5), (1, 5), deduplicate=True)
        if video_dim is not None and text_dim is not None:
            self._build(video_dim, text_dim)

    def _build(self, video_dim: int, text_dim: int) -> None:
        """Build the network from the constructor's arguments that are :class:`NLQModelConfig` fields."""
        sizes = {f.name: self.hparams[f.name] for f in fields(NLQModelConfig) if f.name in self.hparams}
        self.model = NLQModel(NLQModelConfig(**sizes | {"video_dim": video_dim, "text_dim": text_dim}))

    def setup(self, stage: str) -> None:
        """Build the network (widths not given come from the DataModule); start it from ``init_from``."""
        if self.model is None:
            self._build_from_data()
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if stage == "fit" and self.hparams.init_from and not resuming:
            self.load_initial_weights(self.hparams.init_from)
        if self.hparams.get("compile"):
            # in place: the state_dict keys stay those of the plain network (no ``_orig_mod.`` prefix)
            self.model.compile()

    def load_initial_weights(self, path: str) -> None:
        """Copy a checkpoint's network weights into this model (weights only; nothing else is taken).

        Raises:
            CheckpointError: not an NLQModule checkpoint, or a network of another architecture (the keys or
                shapes that differ are named).
        """
        from repsuite.checkpoints import CheckpointError, check_keys

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise CheckpointError(
                f"init_from {path}: cannot be read as a weights-only checkpoint ({err})"
            ) from err
        state = {
            k[len("model.") :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")
        }
        if not state:
            raise CheckpointError(
                f"init_from {path}: no NLQModule network weights ('model.*') in its state_dict"
            )
        check_keys(state, self.model.state_dict(), f"init_from {path}", "NLQModel")
        self.model.load_state_dict(state)
        rank_zero_info(f"NLQModule: network initialised from {path} ({len(state)} tensors)")

    def _build_from_data(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dims = {}
        for name in ("video_dim", "text_dim"):
            dims[name] = self.hparams[name]
            if dims[name] is None:
                if dm is None or not hasattr(dm, name):
                    raise ValueError(f"NLQModule: `{name}` is not set and the DataModule does not provide it")
                dims[name] = int(getattr(dm, name))
        self._build(**dims)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the network's config: widths read at setup are not among the hyper-parameters."""
        super().on_save_checkpoint(checkpoint)
        if self.model is not None:
            checkpoint[MODEL_CONFIG_KEY] = asdict(self.model.cfg)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the network from the saved config when the hyper-parameters lack the widths.

        Raises:
            CheckpointError: this module was built with another architecture than the checkpoint's (e.g.
                ``--model.hidden`` typed next to ``--ckpt_path``), naming the differing options.
        """
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(MODEL_CONFIG_KEY)
        if self.model is None and saved is not None:
            self.model = NLQModel(NLQModelConfig(**saved))
        elif self.model is not None and saved is not None:
            mine = asdict(self.model.cfg)
            differ = {
                k: (v, mine[k])
                for k, v in saved.items()
                if k in mine and k not in BEHAVIOUR_FIELDS and _differs(v, mine[k])
            }
            if differ:
                from repsuite.checkpoints import CheckpointError

                listed = ", ".join(f"{k}: checkpoint {a!r}, here {b!r}" for k, (a, b) in differ.items())
                raise CheckpointError(
                    f"the checkpoint's network differs from this NLQModule's ({listed}); architecture "
                    "options come from the checkpoint: do not override them next to --ckpt_path"
                )

    # ----------------------------------------------------------------------------------------- steps
    def _forward(
        self, batch: dict[str, Any], k: int, encoded: tuple[Tensor, Tensor] | None = None
    ) -> NLQOutput:
        return self.model(
            batch["video"], batch["video_padding_mask"], batch["text"], batch["text_padding_mask"], k, encoded
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One K drawn per batch (thesis §2.4.2), all loss terms logged."""
        scales = list(self.hparams.scales)
        k = scales[int(torch.randint(len(scales), ()))]
        terms = self.criterion(self._forward(batch, k), batch)
        self.log_dict(
            {f"train/{n}": v for n, v in terms.items() if n != "loss"}, batch_size=len(batch["keys"])
        )
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=len(batch["keys"]))
        return terms["loss"]

    def predict_windows(
        self, batch: dict[str, Any], outputs: dict[int, NLQOutput] | None = None, top_k: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Ranked windows in seconds (B, top_k, 2) and scores (B, top_k), pooled over inference scales.

        Each scale proposes its best (start, end) pairs; the pool is ranked by score and, with ``nms_iou``,
        thinned by temporal NMS so the top-k are different answers, not near-copies of the best one.
        ``top_k`` defaults to the module's; missing slots have score −1.
        """
        h = self.hparams
        top_k = top_k or h.top_k
        # with NMS the pool must not shrink with top_k: a smaller pool can lose a candidate that the
        # suppression of its near-copies would have promoted, and top_k=3 would not be top_k=5's first three
        per_scale = h.candidates_per_scale or (4 * max(top_k, h.top_k) if h.nms_iou is not None else top_k)
        cands, scores = [], []
        todo = [k for k in list(h.inference_scales or h.scales) if not (outputs and k in outputs)]
        encoded = None
        if len(todo) > 1 and not self.model.training:  # the input projections are the same at every K
            encoded = self.model.encode(batch["video"], batch["text"], batch["text_padding_mask"])
        for k in list(h.inference_scales or h.scales):
            out = outputs[k] if outputs and k in outputs else self._forward(batch, k, encoded)
            s, e, p = joint_topk(out.start_logits, out.end_logits, batch["video_padding_mask"], per_scale,
                                 h.max_span)  # fmt: skip
            cands.append(torch.stack([s, e + 1], dim=-1).to(torch.float64))  # half-open bins: IoU in bins
            scores.append(p.to(torch.float64))
        bins, score = merge_candidates(torch.cat(cands, 1), torch.cat(scores, 1), top_k, h.deduplicate,
                                       h.nms_iou)  # fmt: skip
        n = batch["num_bins"].to(torch.float64)[:, None]
        windows = bins_to_seconds(bins[..., 0], bins[..., 1] - 1, batch["duration"][:, None], n)  # (B, k, 2)
        return windows, score

    def _eval_step(self, batch: dict[str, Any], metric: NLQRecall, prefix: str) -> None:
        mid = list(self.hparams.scales)[len(self.hparams.scales) // 2]
        out = self._forward(batch, mid)
        terms = self.criterion(out, batch)
        self.log_dict(
            {f"{prefix}/{n}": v for n, v in terms.items()}, batch_size=len(batch["keys"]), sync_dist=True
        )
        windows, scores = self.predict_windows(batch, {mid: out})  # reuse the loss pass at K = mid
        metric.update(
            windows,
            batch["gt_seconds"],
            query_ids=batch["query_id"],
            num_windows=(scores >= 0).sum(1).clamp(min=1),
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss terms and the official R@k / mIoU on decoded windows in seconds."""
        self._eval_step(batch, self.val_metric, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """As validation, on the test split."""
        self._eval_step(batch, self.test_metric, "test")

    def _log_metric(self, metric: NLQRecall, prefix: str) -> None:
        scores = metric.compute()
        self.log_dict(
            {
                f"{prefix}/{k}": (100 * v if "IoU" in k or k == "mean_R@1" else v)
                for k, v in scores.items()
                if k not in ("missing",)
            }
        )
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        """Log R@{1,5} × IoU{0.3,0.5}, mean R@1 and mIoU (×100)."""
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        """Log the test scores."""
        self._log_metric(self.test_metric, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Submission entries: clip/annotation/query ids, ranked ``predicted_times`` and their ``scores``."""
        windows, scores = self.predict_windows(batch)
        entries = []
        for (clip_uid, ann_uid, qidx), w, s in zip(
            batch["keys"], windows.tolist(), scores.tolist(), strict=True
        ):
            kept, kept_scores = ranked_windows(w, s)
            entries.append(
                {
                    "clip_uid": clip_uid,
                    "annotation_uid": ann_uid,
                    "query_idx": qidx,
                    "predicted_times": kept,
                    "scores": kept_scores,
                }
            )
        return entries

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW on all parameters (lr 1e-4, weight decay 1e-4 in the thesis recipe)."""
        params = list(self.parameters())
        return torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, **adam_kwargs(params)
        )
