"""A face-reconstruction network for shape-aware identity: face shape, pose and expression coefficients.

An identity recogniser trained to tell identities apart reads whatever separates them most cheaply —
on repsuite's synthetic faces, skin and hair colour — and a swapper optimised against it transfers
exactly that and keeps the target's face shape (``configs/faceswap/demo.yaml`` records the measurements).
HifiFace (Wang et al., IJCAI 2021, §3.1 and Eq. 6) adds a *shape-aware* identity: a 3D face reconstruction
network (a 3DMM coefficient regressor) reads the source's shape and the target's pose and expression, and
the swap's own reconstruction must match that fused set of coefficients. :class:`FaceRecon` is that
network here: a timm CNN regressing the chosen renderer parameters of a face — the identity's shape
(``SHAPE_FIELDS``) and the attributes a swap keeps (``KEPT_FIELDS``). It is trained on its own faces
(``ROOT/recon`` of ``repsuite faceswap synth``: identities apart from both the swapper's training faces and
the judge's) by ``configs/faceswap/recon_demo.yaml``, and read with :func:`load_face_recon`.

It is a *training* network, like the identity encoder: the independent judge
(:mod:`repsuite.faceswap.judge`) must share no weights with it, and ``FaceSwapModule`` refuses one that does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from repsuite.checkpoints import check_keys, read_module_weights
from repsuite.faceswap.align import faces_at

__all__ = ["KEPT_FIELDS", "SHAPE_FIELDS", "FaceRecon", "FaceReconConfig", "load_face_recon"]

# The renderer's identity parameters that are shape, not colour (repsuite.faceswap.synthetic.IDENTITY_FIELDS):
# what a 3DMM's identity coefficients describe. Colour stays with the identity encoder.
SHAPE_FIELDS = (
    "face_width", "face_height", "jaw", "eye_size", "eye_spacing", "brow", "nose_length", "nose_width",
    "fringe",
)  # fmt: skip
# The attributes a swap keeps from the target and a 3DMM also regresses (pose angles, expression).
KEPT_FIELDS = ("yaw", "pitch", "mouth_open", "smile")


@dataclass
class FaceReconConfig:
    """Sizes and outputs of :class:`FaceRecon`.

    Args:
        backbone: a timm model name, built without pretrained weights (``resnet18``: another architecture
            than both the ArcFace IResNet and the judge's plain CNN).
        input_size: faces are resized to this before the network.
        shape_fields: names of the identity (shape) coefficients, in output order.
        kept_fields: names of the pose / expression coefficients, in output order after the shape ones.
    """

    backbone: str = "resnet18"
    input_size: int = 64
    shape_fields: tuple[str, ...] = SHAPE_FIELDS
    kept_fields: tuple[str, ...] = KEPT_FIELDS

    def __post_init__(self) -> None:
        self.shape_fields, self.kept_fields = tuple(self.shape_fields), tuple(self.kept_fields)
        if not self.shape_fields or not self.kept_fields:
            raise ValueError("FaceReconConfig: shape_fields and kept_fields must each name a field")


class FaceRecon(nn.Module):
    """Aligned faces (B, 3, S, S) in [-1, 1] → shape (B, n_shape), pose / expression (B, n_kept) coefficients.

    Outputs are standardised (zero mean, unit variance over the training set); ``mean`` / ``std`` buffers
    (set by the trainer, saved with the weights) give the renderer's units.
    """

    def __init__(self, cfg: FaceReconConfig | None = None) -> None:
        super().__init__()
        import timm

        self.cfg = cfg = cfg or FaceReconConfig()
        n = len(cfg.shape_fields) + len(cfg.kept_fields)
        try:
            self.backbone = timm.create_model(cfg.backbone, pretrained=False, num_classes=n)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            msg = f"FaceReconConfig: backbone {cfg.backbone!r} is not a timm model ({err})"
            raise ValueError(msg) from err
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    @property
    def fields(self) -> tuple[str, ...]:
        """Names of all outputs, in order (shape, then kept)."""
        return self.cfg.shape_fields + self.cfg.kept_fields

    def set_statistics(self, values: Tensor) -> None:
        """Standardise by the statistics of the training targets (N, n_shape + n_kept)."""
        self.mean.copy_(values.float().mean(0))
        self.std.copy_(values.float().std(0).clamp(min=1e-6))

    def standardised(self, faces: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) in [-1, 1] -> standardised shape (B, n_shape), pose/expression (B, n_kept)."""
        out = self.backbone(faces_at(faces, self.cfg.input_size, "FaceRecon"))  # (B, n_shape + n_kept)
        k = len(self.cfg.shape_fields)
        return out[:, :k], out[:, k:]

    def forward(self, faces: Tensor) -> Tensor:
        """(B, 3, S, S) -> all coefficients (B, n_shape + n_kept) in the renderer's units."""
        shape, kept = self.standardised(faces)
        return torch.cat([shape, kept], dim=1) * self.std + self.mean


def load_face_recon(path: str | Path) -> FaceRecon:
    """A frozen :class:`FaceRecon` in eval mode from a checkpoint of ``configs/faceswap/recon_demo.yaml``.

    Raises:
        CheckpointError: not a face-reconstruction checkpoint, or weights that do not match its sizes.
    """
    hp, state = read_module_weights(
        path, "recon", "FaceReconModule",
        "train one with `repsuite fit --config configs/faceswap/recon_demo.yaml`",
    )  # fmt: skip
    names = FaceReconConfig.__dataclass_fields__
    net = FaceRecon(FaceReconConfig(**{k: v for k, v in hp.items() if k in names}))
    check_keys(state, net.state_dict(), str(path), "FaceRecon")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)
