"""Frame encoders for feature extraction: any open_clip image tower or timm model, from a local checkpoint.

Preprocessing is read from the model's own configuration (open_clip's ``preprocess_cfg``, timm's resolved
data config) and split in two: the decoder resizes each frame so its short side is ``resize_to`` pixels
(bicubic, in the DataLoader workers, where it is cheap to shrink a 1080p frame before it is moved), and
:meth:`FrameEncoder.forward` centre-crops, scales and normalises the uint8 batch on the accelerator.
For open_clip ViT-B-16 this is Resize(224, bicubic) → CenterCrop(224) → Normalize(CLIP mean/std), exactly
the model's own transform; for timm models Resize(size / crop_pct) → CenterCrop(size) → Normalize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from repsuite.checkpoints import check_keys, file_sha256, read_state_dict, recorded_weights

__all__ = ["ENCODER_KINDS", "FrameEncoder", "Preprocess"]

ENCODER_KINDS = ("open_clip", "timm")


@dataclass(frozen=True)
class Preprocess:
    """Resize (short side), centre crop and normalisation constants of an image model."""

    resize_to: int
    crop: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


class FrameEncoder(nn.Module):
    """A frozen image model mapping uint8 frames (B, 3, H, W) to features (B, D).

    Args:
        kind: ``"open_clip"`` (the image tower's projected embedding, 512-d for ViT-B-16, as the thesis's
            CLIP features) or ``"timm"`` (the pooled pre-logits features, ``num_features``-d).
        model: model name (open_clip: e.g. ``ViT-B-16``, or a path to a model-config JSON; timm: e.g.
            ``vit_base_patch16_224``).
        checkpoint: local weights file; required unless ``random_init`` (benchmarks and tests only).
        random_init: allow random weights.
    """

    def __init__(self, kind: str, model: str, checkpoint: str | None = None, random_init: bool = False):
        super().__init__()
        if kind not in ENCODER_KINDS:
            raise ValueError(f"encoder kind must be one of {ENCODER_KINDS}, got {kind!r}")
        if checkpoint is None and not random_init:
            raise ValueError(
                f"FrameEncoder: {kind} model {model!r} needs `checkpoint` (a local weights file); random "
                "weights give meaningless features and are refused unless random_init=True is asked for "
                "explicitly"
            )
        self.kind, self.model_name, self.checkpoint = kind, model, checkpoint
        if kind == "open_clip":
            self.net, self.preprocess, self.dim = self._open_clip(model, checkpoint)
        else:
            self.net, self.preprocess, self.dim = self._timm(model, checkpoint)
        self.net.eval().requires_grad_(False)
        p = self.preprocess
        self.register_buffer("mean", torch.tensor(p.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(p.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def _open_clip(self, name: str, checkpoint: str | None) -> tuple[nn.Module, Preprocess, int]:
        import open_clip

        from repsuite.nlq.clip_text import resolve_clip_model

        self.model_name = resolve_clip_model(name)
        clip = open_clip.create_model(self.model_name, pretrained=None)
        visual = clip.visual
        if checkpoint is not None:
            state = {
                k[len("visual.") :]: v
                for k, v in read_state_dict(checkpoint).items()
                if k.startswith("visual.")
            }
            check_keys(
                state, visual.state_dict(), checkpoint, f"open_clip model {self.model_name!r} (image tower)"
            )
            visual.load_state_dict(state)
        cfg = open_clip.get_model_preprocess_cfg(clip)
        size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
        pre = Preprocess(min(size), tuple(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
        dim = int(open_clip.get_model_config(self.model_name)["embed_dim"])
        return visual, pre, dim

    def _timm(self, name: str, checkpoint: str | None) -> tuple[nn.Module, Preprocess, int]:
        import timm
        from timm.data import resolve_data_config

        net = timm.create_model(name, pretrained=False, num_classes=0)
        if checkpoint is not None:
            state = read_state_dict(checkpoint)
            expected = net.state_dict()
            head = tuple(
                k for k in state if k not in expected and k.split(".")[0] in ("head", "fc", "classifier")
            )
            check_keys(
                state, expected, checkpoint, f"timm model {name!r}", ignore=head
            )  # classifier not used
            net.load_state_dict({k: v for k, v in state.items() if k in expected})
        cfg = resolve_data_config({}, model=net)
        _, h, w = cfg["input_size"]
        resize = math.floor(min(h, w) / cfg.get("crop_pct", 1.0))
        pre = Preprocess(resize, (h, w), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
        return net, pre, int(net.num_features)

    def describe(self) -> dict:
        """What a manifest records about this encoder (enough to rebuild it: :meth:`from_record`)."""
        config = None
        if self.kind == "open_clip":
            import open_clip

            config = open_clip.get_model_config(self.model_name)  # a model given as JSON needs it back
        return {
            "kind": self.kind,
            "model": self.model_name,
            "model_config": config,
            "checkpoint": str(Path(self.checkpoint).resolve()) if self.checkpoint else None,
            "checkpoint_sha256": file_sha256(self.checkpoint) if self.checkpoint else None,
            "random_init": self.checkpoint is None,
            "dim": self.dim,
            "preprocess": {
                "resize_short_side": self.preprocess.resize_to,
                "center_crop": list(self.preprocess.crop),
                "mean": list(self.preprocess.mean),
                "std": list(self.preprocess.std),
                "interpolation": self.preprocess.interpolation,
            },
        }

    def prepare(self, frames: Tensor) -> Tensor:
        """uint8 (B, 3, H, W), short side already ``resize_to`` → normalised float (B, 3, crop_h, crop_w)."""
        ch, cw = self.preprocess.crop
        h, w = frames.shape[-2:]
        if h < ch or w < cw:
            raise ValueError(f"frames {h}x{w} are smaller than the {ch}x{cw} crop; resize them first")
        top, left = (h - ch) // 2, (w - cw) // 2
        x = frames[..., top : top + ch, left : left + cw].float()  # (B, 3, ch, cw)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """uint8 frames (B, 3, H, W) → float32 features (B, D)."""
        return self.net(self.prepare(frames)).float()  # open_clip: projected embedding; timm: pooled

    @classmethod
    def from_record(cls, record: dict, checkpoint: str | None = None) -> FrameEncoder:
        """The encoder a manifest's ``encoder`` entry describes, from ``checkpoint`` or the recorded path.

        Raises:
            ValueError: the record names random weights, the weights file is missing, or its bytes are not
                the ones the features were made with (sha256), each naming the file.
        """
        what = f"{record.get('kind')} model {record.get('model')!r}"
        path = recorded_weights(checkpoint or record.get("checkpoint"), record.get("checkpoint_sha256"), what)
        model = record["model"]
        if record["kind"] == "open_clip":
            from repsuite.nlq.clip_text import register_clip_config

            model = register_clip_config(model, record.get("model_config"))
        return cls(record["kind"], model, str(path))

    def encode_video(
        self, path: str | Path, sampling: str = "center", seed: int = 0, key: str = "", batch_size: int = 64
    ) -> Tensor:
        """Official feature rows (N, D) of one video file, as ``repsuite nlq extract-video`` writes them.

        One frame per row (window 32, stride 16 at 30 fps), picked by ``sampling`` (``key`` seeds random
        picks per video, the extractor uses the video uid), encoded ``batch_size`` frames at a time.

        Raises:
            VideoError: the file cannot be decoded or is shorter than one window.
        """
        from repsuite.nlq.extract.video import (
            VideoError,
            decode_rows,
            frames_30fps,
            probe_video,
            row_frame_indices,
        )
        from repsuite.nlq.features import official_num_rows

        info = probe_video(path)
        frames = frames_30fps(info)
        if official_num_rows(frames) == 0:
            raise VideoError(f"{path}: shorter than one window ({frames} frames at 30 fps < 32): no rows")
        device = self.mean.device
        indices = row_frame_indices(frames, sampling, seed, key)
        chunks = [self(c.to(device)).cpu() for _, c in decode_rows(info, indices, self.preprocess.resize_to,
                                                                     batch_size)]  # fmt: skip
        return torch.cat(chunks)  # (N, D)
