"""``FaceSwapModule``: adversarial training of the thesis's face swapper (Lightning, manual optimization)."""

from __future__ import annotations

import inspect
import math
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from repsuite.faceswap.align import face_template
from repsuite.faceswap.arcface import IRESNET_LAYERS, iresnet, load_arcface
from repsuite.faceswap.discriminators import COMPONENTS, FacialComponentDiscriminator, crop_components
from repsuite.faceswap.judging import SwapJudge, check_independent, open_judge
from repsuite.faceswap.loading import load_stylegan2
from repsuite.faceswap.losses import (
    IdentityLoss,
    ReconstructionLoss,
    ShapeLoss,
    WeakFeatureMatchingLoss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    r1_penalty,
)
from repsuite.faceswap.metrics import ArcFaceEmbedder
from repsuite.faceswap.model import FaceSwapGenerator, FaceSwapGeneratorConfig, to_channels_last
from repsuite.faceswap.recon import FaceRecon, FaceReconConfig, load_face_recon
from repsuite.faceswap.scores import SwapScores
from repsuite.faceswap.stylegan2 import StyleGAN2Config, StyleGAN2Discriminator, StyleGAN2Generator
from repsuite.optim import adam_kwargs
from repsuite.resume import ExactResumeMixin

__all__ = ["FaceSwapModule"]

ARCHITECTURE_KEY = "faceswap_architecture"


class FaceSwapModule(ExactResumeMixin, LightningModule):
    """The thesis's face swapper (chapter 3) with a StyleGAN2 prior, global + eye/mouth discriminators.

    Args:
        resolution: face size; must equal the prior's (512 for the FFHQ-512 prior).
        prior_ckpt: StyleGAN2 prior in GFPGAN's clean layout
            (e.g. ``StyleGAN2_512_Cmul1_FFHQ_B12G4_scratch_800k.pth``).
        id_encoder_ckpt: ArcFace weights: an arcface_torch ``backbone.pth`` or a checkpoint of
            ``repsuite fit --config configs/faceswap/idnet_demo.yaml`` (told apart automatically). A list
            uses several encoders (e.g. the whole head at one crop, the inner face at a larger one): the
            generator gets their joined embeddings and the identity loss their mean cosine.
        random_prior: allow a randomly initialised prior (demos and tests on synthetic faces; pair it with
            ``train_prior``) — refused otherwise, since a random prior makes the method meaningless.
        random_id_encoder: allow a random identity encoder (plumbing tests only).
        id_judge_ckpt: an independent judge for validation (a ``FaceJudgeModule`` checkpoint of
            ``configs/faceswap/judge_demo.yaml`` on synthetic faces, or an ArcFace other than
            ``id_encoder_ckpt``): logs ``val/judge_source_top1`` / ``val/judge_target_top1`` (whose identity
            it sees in the swaps) and pose / expression errors next to the training encoder's
            ``val/id_retrieval``. Refused when it is, or shares weights with, the training encoder or the
            shape network. Not saved in checkpoints.
        shape_ckpt: a face-reconstruction network (``FaceReconModule`` checkpoint of
            ``configs/faceswap/recon_demo.yaml``; a 3DMM regressor in HifiFace) for HifiFace's shape-aware
            identity (beyond the thesis): the swap's reconstructed face shape must be the source's, its pose
            and expression the target's (``shape_weight``), and with ``shape_input`` the generator is also
            told the source's shape coefficients. An identity encoder can be satisfied by colour alone and
            need not encode the face's geometry at all; this network reads it. Frozen, saved in the
            checkpoint (``shape_input`` needs it to embed sources); validation logs its reading of the
            swaps as ``val/shape_error`` (standardised L1 to the fused coefficients).
        shape_weight: λ_shape of the shape loss (L1 on standardised coefficients).
        shape_kept_weight: weight of each pose / expression coefficient against a shape coefficient inside
            the shape loss's (normalised) mean; above 1 the swap is held closer to the target's pose.
        shape_input: append the source's standardised shape coefficients to the identity vector the
            generator is conditioned on (HifiFace's v_sid = ArcFace identity ‖ 3D shape coefficients).
        shape_arch: the shape network's architecture (read from ``shape_ckpt``; checkpoints record it).
        channel_multiplier, narrow, num_mlp: architecture of a random prior (else read from ``prior_ckpt``).
        unet_narrow, id_injection, unet_skips, unet_skip_max_res, skip_warp, id_blocks_bottleneck,
        train_prior: see :class:`~repsuite.faceswap.model.FaceSwapGeneratorConfig`.
        component_discriminators: add the left-eye / right-eye / mouth discriminators (GFPGAN).
        component_width: first-layer channels of the component discriminators.
        id_weight, recon_weight, adv_weight, fm_weight: λ_ID, λ_Recon, λ_adv, λ_wkFM (10 / 10 / 1 / 5).
        id_jitter: the identity loss sees the swap through a random shift / scale of up to this fraction of
            the face (0: the plain swap, as in the thesis). A generator can satisfy one encoder at one exact
            crop with changes no other recogniser reads as identity; identity that survives re-cropping is
            identity in the image.
        component_weight: weight of each component discriminator's adversarial term relative to the global
            one; ``adv_weight`` scales both (λ_adv multiplies the whole adversarial loss, Eq. 3.10 / 3.12).
        fm_layers: deepest discriminator feature maps matched by the weak feature-matching loss.
        r1_weight: R1 penalty weight (0 turns it off); applied lazily every ``r1_every`` steps.
        r1_every: lazy-regularisation interval.
        lr: Adam learning rate for G and D (2e-4, no decay).
        prior_lr: learning rate of the StyleGAN2 prior when ``train_prior`` (None: ``lr``). StyleGAN2's
            equalised-learning-rate weights are N(0, 1) and scaled at run time, so an Adam step moves them
            ~1/√fan_in less, relative to their size, than the plain convolutions around them; a prior trained
            from scratch (the synthetic demo) needs a larger rate to keep up.
        betas: Adam betas ((0, 0.999) in the thesis).
        ema_decay: keep an exponential moving average of the generator for validation and export
            (None disables it).
        grad_clip: clip the G and D gradient norms to this value (None: no clipping, as in the thesis).
            Not available with ``16-mixed`` precision (its loss scaler owns unscaling); use ``bf16-mixed``.
        channels_last: store the 4-D weights channels-last when training starts (activations follow). With
            ``--trainer.precision bf16-mixed`` on CPUs with AMX or on GPUs, convolutions run several times
            faster that way; in float32 on CPU it is often slower.
        compile: run the generator's forward through ``torch.compile`` (TorchInductor) during training and
            validation; weights and checkpoints are those of the plain module. The discriminators stay eager:
            their R1 penalty differentiates twice, which compiled graphs do not support.
        share_real_pass: run the global discriminator over the real targets once per step, for both the
            generator's feature matching and the discriminator's loss (bitwise the same training, one
            discriminator pass fewer: ~7% less time per 64 px step on CPU). Its activations are then held
            through the generator step (about 0.26 / 0.44 GiB per image at 256 / 512 px in float32): turn it
            off when that memory binds.
        max_skipped_steps: a G or D step whose loss or gradients are not finite is skipped (counted and
            logged as ``train/skipped_steps``); this many skips in a row stop training with an error.
        grid_size: sources × targets in the logged swap grid.
        id_encoder_depth, id_encoder_input_size, id_encoder_crop_zoom: architecture and crop of a random
            identity encoder (read from ``id_encoder_ckpt`` otherwise).
        id_encoder_extra_arch: (depth, input size, crop zoom) of each further encoder, for random ones (read
            from the files otherwise; checkpoints record it).
    """

    def __init__(
        self,
        resolution: int = 512,
        prior_ckpt: str | None = None,
        id_encoder_ckpt: str | list[str] | None = None,
        random_prior: bool = False,
        random_id_encoder: bool = False,
        id_judge_ckpt: str | None = None,
        shape_ckpt: str | None = None,
        shape_weight: float = 10.0,
        shape_kept_weight: float = 1.0,
        shape_input: bool = True,
        shape_arch: dict[str, Any] | None = None,
        channel_multiplier: float = 1,
        narrow: float = 1.0,
        num_mlp: int = 8,
        unet_narrow: float = 0.5,
        id_injection: Literal["modulation", "adain"] = "modulation",
        unet_skips: bool = False,
        unet_skip_max_res: int | None = None,
        skip_warp: bool = False,
        id_blocks_bottleneck: int = 2,
        train_prior: bool = False,
        component_discriminators: bool = True,
        component_width: int = 64,
        id_weight: float = 10.0,
        recon_weight: float = 10.0,
        adv_weight: float = 1.0,
        fm_weight: float = 5.0,
        id_jitter: float = 0.0,
        component_weight: float = 1.0,
        fm_layers: int = 2,
        r1_weight: float = 10.0,
        r1_every: int = 16,
        lr: float = 2e-4,
        prior_lr: float | None = None,
        betas: tuple[float, float] = (0.0, 0.999),
        ema_decay: float | None = 0.999,
        grad_clip: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        share_real_pass: bool = True,
        max_skipped_steps: int = 20,
        grid_size: int = 4,
        id_encoder_depth: int = 18,
        id_encoder_input_size: int = 112,
        id_encoder_crop_zoom: float = 1.0,
        id_encoder_extra_arch: list[tuple[int, int, float]] | None = None,
        _arch_only: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["_arch_only"])
        self.automatic_optimization = False
        with torch.random.fork_rng(devices=[]):  # the generator's initial weights stay those of one encoder
            self.arcface, extra = self._build_id_encoders(_arch_only)
        #: further identity encoders (``id_encoder_ckpt`` given as a list); the first stays ``arcface``
        self.arcface_extra = nn.ModuleList(extra)
        self.embedder = ArcFaceEmbedder(self.arcface, self.arcface_extra)
        with torch.random.fork_rng(devices=[]):
            #: the frozen face-reconstruction network of the shape-aware identity (``shape_ckpt``), or None
            self.shape_net = self._build_shape_net(_arch_only)
        prior = self._build_prior(_arch_only)
        self.generator = FaceSwapGenerator(self._generator_config(prior.cfg), prior)
        self.discriminator = StyleGAN2Discriminator(prior.cfg)
        names = COMPONENTS if component_discriminators else ()
        self.components = nn.ModuleDict({n: FacialComponentDiscriminator(component_width) for n in names})
        self.generator_ema = self._build_ema(ema_decay)
        self.id_loss = IdentityLoss(id_weight)
        self.recon_loss = ReconstructionLoss(recon_weight)
        self.fm_loss = WeakFeatureMatchingLoss(fm_weight, fm_layers)
        self.shape_loss = ShapeLoss(shape_weight, shape_kept_weight)
        self.judge = self._build_judge(_arch_only)
        self.val_scores = SwapScores(self.embedder, self.judge, judge_baselines=False)
        self._grid: Tensor | None = None
        self._id_jitter: nn.Module | None = None
        self._skipped_total = self._skipped_in_row = 0

    # ------------------------------------------------------------------------------------------- building
    def _generator_config(self, prior: StyleGAN2Config) -> FaceSwapGeneratorConfig:
        """The generator's config: the constructor's arguments of that name, the prior's sizes."""
        h = self.hparams
        given = {f.name: h[f.name] for f in fields(FaceSwapGeneratorConfig) if f.name in h}
        given["id_dim"] = self.embedder.dim + self._shape_dim()  # 512 per identity encoder (+ shape)
        return FaceSwapGeneratorConfig(**given | {f.name: getattr(prior, f.name) for f in fields(prior)})

    def _build_ema(self, decay: float | None) -> AveragedModel | None:
        """The generator's exponential moving average (torch's ``AveragedModel``), buffers included."""
        if not decay:
            return None
        # a partial of a module-level function, not torch's get_ema_multi_avg_fn closure: ddp_spawn pickles
        ema = AveragedModel(self.generator, multi_avg_fn=partial(_ema_update, decay=decay), use_buffers=True)
        self._register_load_state_dict_pre_hook(_rename_old_ema_keys)
        return ema.requires_grad_(False)

    def _build_shape_net(self, arch_only: bool) -> FaceRecon | None:
        """The shape network from ``shape_ckpt``, or rebuilt from ``shape_arch`` (weights: the state dict)."""
        h = self.hparams
        if h.shape_ckpt and not arch_only:
            return load_face_recon(h.shape_ckpt)
        if arch_only and h.shape_arch:
            return FaceRecon(FaceReconConfig(**h.shape_arch)).eval().requires_grad_(False)
        return None

    def _shape_dim(self) -> int:
        """Width of the shape coefficients appended to the generator's identity vector (0 when not)."""
        if self.shape_net is None or not self.hparams.shape_input:
            return 0
        return len(self.shape_net.cfg.shape_fields)

    def _build_prior(self, arch_only: bool) -> StyleGAN2Generator:
        h = self.hparams
        if h.prior_ckpt and not arch_only:
            prior = load_stylegan2(h.prior_ckpt)
            if prior.cfg.out_size != h.resolution:
                raise ValueError(
                    f"FaceSwapModule: resolution {h.resolution} does not match the StyleGAN2 prior "
                    f"({prior.cfg.out_size} px from {h.prior_ckpt}); set resolution to the prior's size"
                )
            return prior
        if not (h.random_prior or arch_only):
            raise ValueError(
                "FaceSwapModule: needs prior_ckpt (a StyleGAN2 generator in GFPGAN's clean layout, e.g. "
                "StyleGAN2_512_Cmul1_FFHQ_B12G4_scratch_800k.pth) or random_prior=True (synthetic demos)"
            )
        cfg = StyleGAN2Config(h.resolution, 512, h.num_mlp, h.channel_multiplier, h.narrow)
        return StyleGAN2Generator(cfg)

    def _encoder_paths(self) -> list[str]:
        ckpt = self.hparams.id_encoder_ckpt
        return [] if not ckpt else [ckpt] if isinstance(ckpt, str) else list(ckpt)

    def _build_id_encoders(self, arch_only: bool) -> tuple[nn.Module, list[nn.Module]]:
        """The identity encoder and any further ones, frozen (from their files, else random / as recorded)."""
        h = self.hparams
        paths = self._encoder_paths()
        if paths and not arch_only:
            nets = [load_arcface(p) for p in paths]
            return nets[0], nets[1:]
        if not (h.random_id_encoder or arch_only):
            raise ValueError(
                "FaceSwapModule: needs id_encoder_ckpt (an arcface_torch backbone.pth or a checkpoint of "
                "`repsuite fit --config configs/faceswap/idnet_demo.yaml`) or random_id_encoder=True (tests)"
            )
        arch = [(h.id_encoder_depth, h.id_encoder_input_size, h.id_encoder_crop_zoom)]
        arch += [tuple(a) for a in h.id_encoder_extra_arch or []]
        nets = []
        for depth, size, zoom in arch:
            net = iresnet(int(depth), input_size=int(size))
            net.crop_zoom = float(zoom)
            nets.append(net.eval().requires_grad_(False))
        return nets[0], nets[1:]

    def _build_judge(self, arch_only: bool) -> SwapJudge | None:
        """The independent judge (kept out of the state dict: it is no part of the swapper)."""
        h = self.hparams
        if not h.id_judge_ckpt or arch_only:
            return None
        judge = open_judge(h.id_judge_ckpt)
        for path, net in zip(self._encoder_paths(), [self.arcface, *self.arcface_extra], strict=False):
            check_independent(h.id_judge_ckpt, path, net, judge)
        if self.shape_net is not None and h.shape_ckpt:
            check_independent(h.id_judge_ckpt, h.shape_ckpt, self.shape_net, judge)
        return judge

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> FaceSwapModule:
        """Rebuild from a checkpoint alone (weights_only load); the prior and ArcFace weights are inside."""
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        return cls._from_state(ckpt)

    def architecture(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the networks without their source files.

        The prior's sizes (read from ``prior_ckpt``) and the identity encoder's (read from
        ``id_encoder_ckpt``), under the constructor's argument names.
        """
        prior = self.generator.stylegan.cfg
        (depth, size, zoom), *extra = [_encoder_arch(n) for n in [self.arcface, *self.arcface_extra]]
        shape = self.shape_net.cfg if self.shape_net is not None else None
        shape_arch = None if shape is None else {
            "backbone": shape.backbone, "input_size": shape.input_size,
            "shape_fields": list(shape.shape_fields), "kept_fields": list(shape.kept_fields),
        }  # fmt: skip
        return {
            "channel_multiplier": prior.channel_multiplier, "narrow": prior.narrow, "num_mlp": prior.num_mlp,
            "id_encoder_depth": depth, "id_encoder_input_size": size, "id_encoder_crop_zoom": zoom,
            "id_encoder_extra_arch": [list(a) for a in extra] or None, "shape_arch": shape_arch,
        }  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save :meth:`architecture`: the hyper-parameters hold what was given, not what was loaded."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[ARCHITECTURE_KEY] = self.architecture()

    @classmethod
    def _from_state(cls, ckpt: dict) -> FaceSwapModule:
        names = inspect.signature(cls.__init__).parameters
        hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k in names}  # drops the CLI's _class_path
        module = cls(**hp | ckpt.get(ARCHITECTURE_KEY, {}), _arch_only=True)
        module.load_state_dict(ckpt["state_dict"])
        return module.eval()

    def train(self, mode: bool = True) -> FaceSwapModule:
        """The identity encoder always stays in eval mode (frozen batch-norm statistics)."""
        super().train(mode)
        self.arcface.eval()
        self.arcface_extra.eval()
        if self.shape_net is not None:
            self.shape_net.eval()
        return self

    # ------------------------------------------------------------------------------------------- helpers
    def swap_generator(self) -> FaceSwapGenerator:
        """The generator used for validation and export (the EMA copy when kept)."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    def identity_vector(
        self, sources: Tensor, embedding: Tensor | None = None, shape: Tensor | None = None
    ) -> Tensor:
        """What the generator is told about each source face (B, 3, S, S): (B, id_dim).

        The identity encoders' embedding, and with ``shape_input`` the source's standardised shape
        coefficients after it (scaled by 1/√n so they weigh about as much as one unit ArcFace embedding).
        ``embedding`` / ``shape``: the encoders' embedding and the shape network's standardised shape
        coefficients (B, n_shape) of ``sources`` when already computed.
        """
        emb = self.embedder(sources) if embedding is None else embedding
        if not self._shape_dim():
            return emb
        if shape is None:
            shape, _ = self.shape_net.standardised(sources)  # (B, n_shape)
        unit = F.normalize(emb.float(), dim=-1)
        return torch.cat([unit, shape.float() / shape.shape[1] ** 0.5], dim=-1).to(emb.dtype)

    @torch.no_grad()
    def swap(self, sources: Tensor, targets: Tensor) -> Tensor:
        """Swap aligned faces: identity of ``sources`` onto ``targets`` (B, 3, S, S) in [-1, 1]."""
        gen = self.swap_generator()
        return gen(targets, self.identity_vector(sources), randomize_noise=False).clamp(-1, 1)

    def _landmarks(self, batch: dict[str, Any]) -> Tensor | None:
        lm = batch.get("target_landmarks")
        if lm is None:
            return None
        missing = torch.isnan(lm).any(-1).any(-1)  # (B,)
        if missing.any():  # images without landmarks use the aligned-face template
            lm = lm.clone()
            lm[missing] = face_template(self.hparams.resolution).to(lm)
        return lm

    @property
    def iteration(self) -> int:
        """Training batches seen so far (restored on resume).

        Not ``global_step``: under manual optimization that counts the steps each optimizer took, which
        drifts from the batch count when a non-finite step is skipped.
        """
        return self.trainer.fit_loop.total_batch_idx

    def _set_d_grad(self, flag: bool) -> None:
        self.discriminator.requires_grad_(flag)
        self.components.requires_grad_(flag)

    # ------------------------------------------------------------------------------------------- training
    def generator_losses(
        self,
        batch: dict[str, Any],
        swap: Tensor,
        id_src: Tensor,
        shape_readings: tuple[Tensor, Tensor] | None = None,
        real_features: list[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Every generator term (weighted), for one batch of swaps.

        ``shape_readings``: :meth:`_shape_readings` of the batch when already computed.
        ``real_features``: the discriminator's feature maps of the batch's targets (for the feature matching)
        when already computed with the current discriminator weights.
        """
        h = self.hparams
        logits, fake_feats = self.discriminator(swap, return_features=True)
        if real_features is None:
            with torch.no_grad():
                _, real_features = self.discriminator(batch["target"], return_features=True)
        real_feats = [f.detach() for f in real_features]
        terms = {
            "g_adv": h.adv_weight * generator_adversarial_loss(logits),
            "id": self.id_loss(self.embedder(self._identity_view(swap)), id_src),
            "recon": self.recon_loss(swap, batch["target"], batch["same_identity"]),
            "fm": self.fm_loss(fake_feats, real_feats),
        }
        if self.shape_net is not None and h.shape_weight:
            terms["shape"] = self._shape_term(swap, shape_readings or self._shape_readings(batch))
        if len(self.components):
            crops = crop_components(swap, self._landmarks(batch))
            for name, d in self.components.items():
                weight = h.adv_weight * h.component_weight
                terms[f"g_{name}"] = weight * generator_adversarial_loss(d(crops[name]))
        return terms

    @torch.no_grad()
    def _shape_readings(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """What the swaps' reconstructions must match (standardised, no gradient).

        The shape network's reading of the sources' shape (B, n_shape) and of the targets' pose and
        expression (B, n_kept).
        """
        n = batch["source"].shape[0]
        # one batch through the frozen (eval-mode) network instead of two: the same numbers, less overhead
        shape, kept = self.shape_net.standardised(torch.cat([batch["source"], batch["target"]]))  # (2B, ·)
        return shape[:n], kept[n:]

    def _shape_term(
        self, swap: Tensor, readings: tuple[Tensor, Tensor], loss: ShapeLoss | None = None
    ) -> Tensor:
        """λ_shape · L1(recon(swap), (shape of the source, pose / expression of the target)).

        ``readings``: :meth:`_shape_readings` of the batch. ``loss``: another weighting than ``shape_weight``
        (validation reports the unweighted error).
        """
        return (loss or self.shape_loss)(*self.shape_net.standardised(swap), *readings)

    def _identity_view(self, swap: Tensor) -> Tensor:
        """The swap as the identity loss sees it: randomly shifted / scaled by up to ``id_jitter``."""
        j = self.hparams.id_jitter
        if not j:
            return swap
        if self._id_jitter is None:
            import kornia.augmentation as K

            self._id_jitter = K.RandomAffine(
                degrees=0.0, translate=(j, j), scale=(1 - j, 1 + j), p=1.0, padding_mode="border"
            )
        return self._id_jitter(swap)

    def _read_real(self, batch: dict[str, Any], r1: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The discriminator on the real targets: (targets, logits (B, 1), feature maps), with gradients.

        The targets require grad when ``r1`` (the R1 penalty differentiates the logits by them).
        """
        real = batch["target"].detach().requires_grad_(r1)
        logits, feats = self.discriminator(real, return_features=True)
        return real, logits, feats

    def discriminator_losses(
        self, batch: dict[str, Any], swap: Tensor, r1: bool, real: tuple[Tensor, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Every discriminator term (the swap is detached).

        ``real``: the targets as the discriminator read them (requiring grad when ``r1``) and its logits
        (B, 1), when already computed with the current weights (:meth:`_read_real`).
        """
        h = self.hparams
        real, real_logits = real or self._read_real(batch, r1)[:2]
        terms = {"d_adv": discriminator_adversarial_loss(real_logits, self.discriminator(swap.detach()))}
        if r1:
            terms["r1"] = 0.5 * h.r1_weight * h.r1_every * r1_penalty(real_logits, real)
        if len(self.components):
            lm = self._landmarks(batch)
            real_crops, fake_crops = crop_components(batch["target"], lm), crop_components(swap.detach(), lm)
            for name, d in self.components.items():
                terms[f"d_{name}"] = discriminator_adversarial_loss(d(real_crops[name]), d(fake_crops[name]))
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One G step then one D step (separate Adam optimizers), EMA update, every term logged."""
        h = self.hparams
        opt_g, opt_d = self.optimizers()
        r1 = h.r1_weight > 0 and self.iteration % h.r1_every == 0
        # the sources' shape is read once: for the generator's input and for the shape loss
        readings = self._shape_readings(batch) if self.shape_net is not None else None
        src_shape = None if readings is None else readings[0]
        with torch.no_grad():
            id_src = self.embedder(batch["source"])
            condition = self.identity_vector(batch["source"], id_src, src_shape)
        swap = self.generator(batch["target"], condition)
        # share_real_pass: the discriminator reads the real targets once; its feature maps serve the
        # generator's feature matching and its logits the discriminator's loss. Only the generator steps in
        # between, so both see the same discriminator weights, as two separate passes did.
        real = self._read_real(batch, r1) if h.share_real_pass else None
        self._set_d_grad(False)
        extra = {} if real is None else {"real_features": real[2]}
        if readings is not None:  # passed only when there is one (overrides of the older signature)
            extra["shape_readings"] = readings
        g_terms = self.generator_losses(batch, swap, id_src, **extra)
        loss_g = sum(g_terms.values())
        g_ok = self._guarded_step(opt_g, loss_g, "generator")
        self._set_d_grad(True)
        d_terms = self.discriminator_losses(batch, swap, r1, real=None if real is None else real[:2])
        loss_d = sum(d_terms.values())
        d_ok = self._guarded_step(opt_d, loss_d, "discriminator")
        self._skipped_in_row = 0 if (g_ok and d_ok) else self._skipped_in_row + 1
        if self._skipped_in_row >= h.max_skipped_steps:
            raise RuntimeError(
                f"FaceSwapModule: {self._skipped_in_row} training steps in a row had a non-finite loss or "
                f"gradient (last: loss_g={loss_g.item():.4g}, loss_d={loss_d.item():.4g}); training "
                "diverged. "
                "Lower lr, set grad_clip (e.g. 10), or resume from an earlier checkpoint."
            )
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        n = batch["target"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in {**g_terms, **d_terms}.items()}, batch_size=n)
        self.log("train/loss_g", loss_g.detach(), prog_bar=True, batch_size=n)
        self.log("train/loss_d", loss_d.detach(), prog_bar=True, batch_size=n)
        self.log("train/skipped_steps", float(self._skipped_total), batch_size=n)

    def _guarded_step(self, opt: Any, loss: Tensor, name: str) -> bool:
        """Backward + (clipped) step, skipped when the loss or the gradients are not finite.

        The decision is reduced over processes (gradients are already all-reduced by DDP), so every rank
        skips the same steps. Returns whether the step was taken.
        """
        h = self.hparams
        opt.zero_grad(set_to_none=True)
        strategy = self.trainer.strategy
        if not strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True):
            return self._skip(name, "loss")
        self.manual_backward(loss)
        if self._loss_scaler() is None:  # a GradScaler finds and skips non-finite gradients itself
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            # The total norm is finite exactly when every gradient is (or overflows float32 when they are
            # absurdly large: skipped too); one pass gives it and clips with it. A loop of per-tensor
            # isfinite checks cost 10 ms a step on CPU.
            finite = True
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params, h.grad_clip or math.inf)
                finite = bool(torch.isfinite(norm))
            if not strategy.reduce_boolean_decision(finite, all=True):
                opt.zero_grad(set_to_none=True)
                return self._skip(name, "gradient")
        # under a loss scaler grad_clip is refused in on_fit_start, so there is nothing to clip here
        opt.step()
        return True

    def _skip(self, name: str, what: str) -> bool:
        self._skipped_total += 1
        if self._skipped_total == 1 or self._skipped_total % 100 == 0:
            rank_zero_warn(
                f"FaceSwapModule: skipped a {name} step at iteration {self.iteration} (non-finite {what}); "
                f"{self._skipped_total} skipped so far"
            )
        return False

    def _loss_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def setup(self, stage: str) -> None:
        """Under DDP, turn on unused-parameter detection before the model is wrapped.

        The G and D steps are separate backward passes: the discriminators get no gradient in the G step
        and the generator none in the D step, which plain DDP rejects as unused parameters.
        """
        from lightning.pytorch.strategies import DDPStrategy

        strategy = self.trainer.strategy if self._trainer is not None else None
        if stage == "fit" and isinstance(strategy, DDPStrategy):
            kwargs = getattr(strategy, "_ddp_kwargs", None)
            if kwargs is None:  # a Lightning without the attribute: say what to do instead
                raise ValueError(
                    "FaceSwapModule under DDP needs unused-parameter detection: use "
                    "--trainer.strategy=ddp_find_unused_parameters_true"
                )
            if not kwargs.get("find_unused_parameters"):
                kwargs["find_unused_parameters"] = True
                rank_zero_info("FaceSwapModule: DDP with find_unused_parameters=True (separate G, D steps)")

    def on_fit_start(self) -> None:
        """Refuse gradient clipping under a loss scaler (``16-mixed``): it would clip scaled gradients.

        With ``channels_last`` the weights are converted here, in place (the optimizers keep their tensors).
        """
        if self.hparams.grad_clip and self._loss_scaler() is not None:
            raise ValueError(
                "FaceSwapModule: grad_clip is not supported with precision='16-mixed' (the loss scaler owns "
                "unscaling); use precision='bf16-mixed' or 32, or set grad_clip to null"
            )
        if self.hparams.channels_last:
            to_channels_last(self)
        if self.hparams.get("compile"):
            # in place: the state_dict keys stay those of the plain generator (no ``_orig_mod.`` prefix)
            self.generator.compile()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for G (its trainable part) and for all discriminators; β = (0, 0.999), lr 2e-4, no decay."""
        h = self.hparams
        d_params = list(self.discriminator.parameters()) + list(self.components.parameters())
        prior = {id(p) for p in self.generator.stylegan.parameters()}
        trainable = self.generator.trainable_parameters()
        groups = [{"params": [p for p in trainable if id(p) not in prior], "lr": h.lr}]
        prior_params = [p for p in trainable if id(p) in prior]  # empty unless train_prior
        if prior_params:
            groups.append({"params": prior_params, "lr": h.prior_lr or h.lr})
        opt_g = torch.optim.Adam(groups, lr=h.lr, betas=tuple(h.betas), **adam_kwargs(groups))
        opt_d = torch.optim.Adam(d_params, lr=h.lr, betas=tuple(h.betas), **adam_kwargs(d_params))
        return [opt_g, opt_d]

    # ------------------------------------------------------------------------------------------- evaluation
    def on_validation_start(self) -> None:
        """The judge and the metric states follow the module's device."""
        if self.judge is not None:
            for net in self.judge.modules():
                net.to(self.device)
        self.val_scores.to(self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Swap the validation pairs and score them (:class:`~repsuite.faceswap.scores.SwapScores`)."""
        swaps = self.swap(batch["source"], batch["target"])
        self.val_scores.update(swaps, batch)
        if self.shape_net is not None:  # the training shape network's reading, beside the judge's
            with torch.no_grad():
                err = self._shape_term(swaps, self._shape_readings(batch), ShapeLoss(1.0))
            self.log("val/shape_error", err, batch_size=swaps.shape[0])
        if batch_idx == 0:
            self._grid = self.swap_grid(batch["source"], batch["target"])

    def on_validation_epoch_end(self) -> None:
        """Log the scores and the source × target grid (W&B, TensorBoard, and a PNG in the log folder).

        ``val/id_retrieval``, ``val/id_cosine``, ``val/psnr`` (and the copy baselines'), ``val/judge_*``.
        """
        results = self.val_scores.results()
        results["psnr"] = results.pop("psnr_swap", None)
        self.log_dict({f"val/{k}": v for k, v in results.items() if v is not None})
        self.val_scores.reset()
        if self._grid is not None and self.trainer is not None and not self.trainer.sanity_checking:
            self._log_grid(self._grid)
        self._grid = None

    @torch.no_grad()
    def swap_grid(self, sources: Tensor, targets: Tensor) -> Tensor:
        """(3, H, W) image in [0, 1]: top row sources, left column targets, swaps in between."""
        import torchvision

        k = min(self.hparams.grid_size, sources.shape[0], targets.shape[0])
        src, tgt = sources[:k], targets[:k]
        blank = torch.ones_like(src[:1])
        tiles = [blank, src]
        for t in tgt:
            tiles += [t[None], self.swap(src, t[None].expand_as(src))]
        grid = torchvision.utils.make_grid(torch.cat(tiles), nrow=k + 1, padding=2, pad_value=1.0)
        return ((grid + 1) / 2).clamp(0, 1).float().cpu()

    def _log_grid(self, grid: Tensor) -> None:
        import torchvision

        step = self.global_step
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/swap_grid", [grid], step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/swap_grid", grid, step)
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(grid, folder / "swap_grid.png")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Swaps (B, 3, S, S) in [-1, 1] with the pair names."""
        return {"name": batch.get("name"), "swap": self.swap(batch["source"], batch["target"]).cpu()}


@torch.no_grad()
def _encoder_arch(net: nn.Module) -> tuple[int, int, float]:
    """(depth, input size, crop zoom) of an IResNet identity encoder."""
    depth = {v: k for k, v in IRESNET_LAYERS.items()}[net.layers_cfg]
    return depth, int(net.input_size), float(getattr(net, "crop_zoom", 1.0))


@torch.no_grad()
def _ema_update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor, decay: float) -> None:
    """``AveragedModel``'s in-place update: average <- decay · average + (1 − decay) · current."""
    for avg, cur in zip(averaged, current, strict=True):
        avg.lerp_(cur, 1 - decay)


def _rename_old_ema_keys(state: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Read checkpoints that kept the EMA generator as a plain copy (``generator_ema.<name>``).

    It is an ``AveragedModel`` now (``generator_ema.module.<name>`` and a ``generator_ema.n_averaged`` count).
    """
    old = f"{prefix}generator_ema."
    if any(k.startswith(old) for k in state) and f"{old}n_averaged" not in state:
        for key in [k for k in state if k.startswith(old)]:
            state[f"{old}module.{key[len(old) :]}"] = state.pop(key)
        state[f"{old}n_averaged"] = torch.tensor(1, dtype=torch.long)
