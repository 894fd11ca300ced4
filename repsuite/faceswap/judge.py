"""An independent judge of face swaps: identity, pose and expression read by a network outside training.

The thesis (§3.4) scores swaps with a face recogniser *other* than the one in the identity loss, plus a
head-pose estimator: a generator optimised against one encoder can satisfy it with changes no other
recogniser reads as identity. On real faces the judge is a second, independently trained ArcFace (pass its
``backbone.pth``). On repsuite's synthetic faces the renderer knows the truth, so the judge here is a plain
CNN — another architecture, input size and training run than the ArcFace IResNet — regressing the
renderer's identity parameters (face shape, skin, eyes, brows, nose, hair) and attributes (pose,
expression, background, light) from the whole aligned face.

Identity retrieval compares :meth:`FaceJudge.identity_embedding` (the predicted identity parameters,
standardised by the training set's statistics) by Euclidean distance; pose and expression errors compare
the predicted attributes with the renderer's truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from repsuite.checkpoints import check_keys, read_module_weights
from repsuite.faceswap.align import faces_at

__all__ = ["EXPRESSION_SLICE", "POSE_SLICE", "FaceJudge", "FaceJudgeConfig", "JudgeView", "load_judge"]

POSE_SLICE = slice(0, 2)  # (yaw, pitch) in repsuite.faceswap.synthetic.ATTRIBUTE_FIELDS
EXPRESSION_SLICE = slice(2, 4)  # (mouth_open, smile)


@dataclass
class FaceJudgeConfig:
    """Sizes of :class:`FaceJudge`.

    Args:
        input_size: faces are resized to this before the network (the whole aligned face, no ArcFace crop).
        width: channels of the first stage (doubled at each of the four stride-2 stages, capped at 8×).
        identity_dim: identity parameters predicted (18 for repsuite's renderer).
        attribute_dim: attribute parameters predicted (8: yaw, pitch, mouth, smile, background RGB, light).
        mouth_branch: read the expression (``EXPRESSION_SLICE``) from a magnified crop of the mouth region
            (a 64 px face's mouth is a few pixels; the whole-face branch does not learn it).
    """

    input_size: int = 48
    width: int = 32
    identity_dim: int = 18
    attribute_dim: int = 8
    mouth_branch: bool = True


# Mouth region of an aligned face (centre x 0.5, y 0.68 of the face: the synthetic renderer's mouth, a little
# above the FFHQ template's 0.725), with room for pose, as an affine_grid matrix in [-1, 1] coordinates:
# half-width 0.17, half-height 0.13 of the face.
_MOUTH_THETA = torch.tensor([[0.34, 0.0, 0.0], [0.0, 0.26, 0.36]])
_MOUTH_SIZE = 32


class _Stage(nn.Module):
    """conv 3×3 stride 2 → GroupNorm → SiLU → conv 3×3 → GroupNorm → SiLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, 2, 1), nn.GroupNorm(8, out_ch), nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.GroupNorm(8, out_ch), nn.SiLU(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/2, W/2)."""
        return self.body(x)


class FaceJudge(nn.Module):
    """Aligned faces (B, 3, S, S) in [-1, 1] → identity (B, identity_dim) and attributes (B, attribute_dim).

    The network predicts standardised parameters; ``*_mean`` / ``*_std`` (buffers, saved with the weights,
    set by the trainer from its training set) map them back to the renderer's units.
    """

    def __init__(self, cfg: FaceJudgeConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or FaceJudgeConfig()
        if cfg.input_size % 16:
            raise ValueError(f"FaceJudge: input_size must be a multiple of 16, got {cfg.input_size}")
        chans = [cfg.width * min(2**i, 8) for i in range(4)]
        self.stages = nn.Sequential(
            *(_Stage(c_in, c_out) for c_in, c_out in zip([3, *chans[:-1]], chans, strict=True))
        )
        side = cfg.input_size // 16
        hidden = 256
        # flatten, not average-pool: where features sit (eye spacing, pose) is part of what is judged
        self.head = nn.Sequential(
            nn.Linear(chans[-1] * side * side, hidden), nn.SiLU(),
            nn.Linear(hidden, cfg.identity_dim + cfg.attribute_dim),
        )  # fmt: skip
        self.mouth = None
        if cfg.mouth_branch:
            if cfg.attribute_dim < EXPRESSION_SLICE.stop:
                raise ValueError(f"FaceJudge: mouth_branch needs attribute_dim >= {EXPRESSION_SLICE.stop}")
            w = cfg.width
            self.mouth = nn.Sequential(
                _Stage(3, w), _Stage(w, 2 * w), nn.Flatten(),
                nn.Linear(2 * w * (_MOUTH_SIZE // 4) ** 2, 128), nn.SiLU(), nn.Linear(128, 2),
            )  # fmt: skip
        self.register_buffer("identity_mean", torch.zeros(cfg.identity_dim))
        self.register_buffer("identity_std", torch.ones(cfg.identity_dim))
        self.register_buffer("attribute_mean", torch.zeros(cfg.attribute_dim))
        self.register_buffer("attribute_std", torch.ones(cfg.attribute_dim))

    def set_statistics(self, identity: Tensor, attributes: Tensor) -> None:
        """Standardise by the statistics of training parameters (N, identity_dim), (N, attribute_dim)."""
        for name, values in (("identity", identity), ("attribute", attributes)):
            getattr(self, f"{name}_mean").copy_(values.float().mean(0))
            getattr(self, f"{name}_std").copy_(values.float().std(0).clamp(min=1e-6))

    def standardised(self, faces: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) in [-1, 1] -> standardised identity (B, identity_dim), attributes (B, attr_dim)."""
        faces = faces_at(faces, self.cfg.input_size, "FaceJudge")
        feat = self.stages(faces)  # (B, C, size/16, size/16)
        out = self.head(rearrange(feat, "b c h w -> b (c h w)"))  # (B, identity_dim + attribute_dim)
        ident, attrs = out[:, : self.cfg.identity_dim], out[:, self.cfg.identity_dim :]
        if self.mouth is not None:
            theta = _MOUTH_THETA.to(faces).expand(faces.shape[0], 2, 3)
            grid = F.affine_grid(theta, [faces.shape[0], 3, _MOUTH_SIZE, _MOUTH_SIZE], align_corners=False)
            crop = F.grid_sample(faces, grid, mode="bilinear", align_corners=False)  # (B, 3, 32, 32)
            e = EXPRESSION_SLICE
            attrs = torch.cat([attrs[:, : e.start], self.mouth(crop), attrs[:, e.stop :]], dim=1)
        return ident, attrs

    def forward(self, faces: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) -> identity (B, identity_dim), attributes (B, attribute_dim), renderer units."""
        ident, attrs = self.standardised(faces)
        return (
            ident * self.identity_std + self.identity_mean,
            attrs * self.attribute_std + self.attribute_mean,
        )

    def identity_embedding(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> standardised identity parameters (B, identity_dim), compared by L2 distance."""
        return self.standardised(faces)[0]

    def attributes(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> predicted attributes (B, attribute_dim) in the renderer's units."""
        return self.forward(faces)[1]


def load_judge(path: str | Path) -> FaceJudge:
    """A frozen :class:`FaceJudge` in eval mode from a checkpoint of ``configs/faceswap/judge_demo.yaml``.

    Raises:
        CheckpointError: not a judge checkpoint, or weights that do not match its recorded sizes.
    """
    hp, state = read_module_weights(
        path, "judge", "FaceJudgeModule",
        "train one with `repsuite fit --config configs/faceswap/judge_demo.yaml`, or pass an ArcFace "
        "backbone.pth",
    )  # fmt: skip
    names = FaceJudgeConfig.__dataclass_fields__
    cfg = {k: v for k, v in hp.items() if k in names}
    cfg["mouth_branch"] = any(k.startswith("mouth.") for k in state)  # judges trained before the mouth crop
    judge = FaceJudge(FaceJudgeConfig(**cfg))
    check_keys(state, judge.state_dict(), str(path), "FaceJudge")
    judge.load_state_dict(state)
    return judge.eval().requires_grad_(False)


class JudgeView(nn.Module):
    """One reading of a :class:`FaceJudge` as a faces → (B, K) module, for the metrics.

    Args:
        judge: the judge.
        view: ``"identity"`` (standardised identity parameters), ``"pose"`` (yaw, pitch) or
            ``"expression"`` (mouth opening, smile).
    """

    def __init__(self, judge: FaceJudge, view: str) -> None:
        super().__init__()
        if view not in ("identity", "pose", "expression"):
            raise ValueError(f"JudgeView: view must be identity, pose or expression, got {view!r}")
        self.judge, self.view = judge, view

    def forward(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, K)."""
        if self.view == "identity":
            return self.judge.identity_embedding(faces)
        attrs = self.judge.attributes(faces)
        return attrs[:, POSE_SLICE] if self.view == "pose" else attrs[:, EXPRESSION_SLICE]
