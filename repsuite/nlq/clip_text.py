"""Token-level query features from a frozen open_clip text tower, computed once and cached on disk.

The thesis feeds the cross-modal transformer CLIP ViT-B/16 *token* states of the question. The author's
release ships them as ``<annotation_uid>_<query_idx>.pt`` files of shape (L, 512) without the code that
made them; the most likely recipe (shared/reference/nlq.md §3.1) is Moment-DETR's: the text transformer's
last block after the final LayerNorm, no text projection, rows SOT..EOT. :class:`ClipTextTower` computes
exactly those states through open_clip's public ``forward_intermediates`` and :func:`cache_text_features`
writes them in the author's file format, so :class:`~repsuite.nlq.data.Ego4DNLQDataset` reads them like the
released files.

Weights always come from a local file: a state dict (``.pt``/``.pth``/``.bin``, optionally under a
``state_dict`` key or with a ``module.`` prefix), a ``.safetensors`` file, or OpenAI's TorchScript archive.
OpenAI's own CLIP weights need the model name ``ViT-B-16-quickgelu`` (they were trained with QuickGELU).
A randomly initialised tower is refused unless ``random_init=True`` is asked for explicitly: its
features carry no meaning and a silent fallback would waste a training run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from repsuite.checkpoints import check_keys, file_sha256, read_state_dict
from repsuite.nlq.annotations import NLQQuery, normalize_question
from repsuite.nlq.features import FeatureError
from repsuite.nlq.text_store import FILES, SHARDS, TextFeatureStore, query_key

__all__ = [
    "ClipTextTower",
    "TextCacheManifest",
    "cache_matches",
    "cache_text_features",
    "clip_text_width",
    "default_cache_name",
    "register_clip_config",
    "resolve_clip_model",
]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SHARD_PATTERN = "shards/<NNNNN>.pt: {<annotation_uid>_<query_idx>: (L, D)}, shard = crc32(key) % num_shards"
STATES = "open_clip text transformer, last block after ln_final, no text projection, rows SOT..EOT"


def resolve_clip_model(model: str) -> str:
    """An open_clip model name, registering ``model`` first when it is a path to a model-config JSON."""
    import open_clip

    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: open_clip model config not found")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(model) is None:
        raise ValueError(
            f"clip model {model!r}: not an open_clip model name (see open_clip.list_models()) nor a path to "
            "a model-config .json"
        )
    return model


def clip_text_width(model: str) -> int:
    """Width of the token states of an open_clip model (512 for ViT-B-16), read from its config."""
    import open_clip

    cfg = open_clip.get_model_config(resolve_clip_model(model))
    return int(cfg["text_cfg"]["width"])


def default_cache_name(model: str) -> str:
    """Cache folder name for ``model``'s token states: ``clip_text_<model>`` (``clip_text_vit_b_16``)."""
    stem = Path(model).stem if model.endswith(".json") else model
    return "clip_text_" + re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")


def register_clip_config(name: str, config: dict | None) -> str:
    """Make ``name`` an open_clip model name, registering a recorded model ``config`` if open_clip lacks it.

    Manifests record the config of the model that made a folder of features, so a model given as a
    config JSON (a custom or test model) can be rebuilt where that JSON is not at hand.
    """
    import tempfile

    import open_clip

    if open_clip.get_model_config(name) is not None:
        return name
    if config is None:
        raise ValueError(f"clip model {name!r}: not an open_clip model name and no model config was recorded")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    return name


def _absolute(path: str | os.PathLike | None) -> str | None:
    """A checkpoint path as manifests record it: absolute, so a predictor elsewhere can find it."""
    return str(Path(path).resolve()) if path else None


class ClipTextTower(nn.Module):
    """A frozen open_clip text tower returning token states per question.

    Args:
        model: open_clip model name (``ViT-B-16`` in the thesis; ``ViT-B-16-quickgelu`` for OpenAI's
            weights) or a path to an open_clip model-config JSON.
        checkpoint: local weights file (whole CLIP or text tower only); required unless ``random_init``.
        random_init: allow random weights (tests, plumbing checks); the features are meaningless.
    """

    def __init__(self, model: str = "ViT-B-16", checkpoint: str | None = None, random_init: bool = False):
        super().__init__()
        import open_clip

        if checkpoint is None and not random_init:
            raise ValueError(
                "ClipTextTower: a frozen CLIP text tower needs `checkpoint` (a local weights file, e.g. "
                "open_clip_pytorch_model.bin of ViT-B-16); random weights give meaningless features and are "
                "refused unless random_init=True is asked for explicitly"
            )
        self.model_name = resolve_clip_model(model)
        self.checkpoint = checkpoint
        clip = open_clip.create_model(self.model_name, pretrained=None)
        if checkpoint is not None:
            self._load(clip, Path(checkpoint))
        if hasattr(clip, "visual"):
            clip.visual = None  # only the text tower is used; frees the image tower's memory
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self.width = clip_text_width(self.model_name)

    def _load(self, clip: nn.Module, path: Path) -> None:
        state = read_state_dict(path)
        expected = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
        state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        check_keys(
            state,
            expected,
            str(path),
            f"open_clip model {self.model_name!r} (text tower)",
            optional=("logit_scale", "logit_bias"),
            ignore=(
                "attn_mask",
                "input_resolution",
                "context_length",
                "vocab_size",
            ),  # OpenAI TorchScript extras
        )
        clip.load_state_dict(state, strict=False)

    def tokenize(self, questions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids (B, 77) of the normalised questions and the EOT position of each (B,)."""
        ids = self.tokenizer([normalize_question(q) for q in questions])  # (B, 77), SOT ... EOT, 0 padding
        return ids, ids.argmax(dim=-1)  # EOT has the largest id in open_clip's BPE vocabulary

    @torch.no_grad()
    def forward(self, questions: Sequence[str]) -> list[Tensor]:
        """Token states for each question: a list of (L_i, width) float32 tensors, L_i = tokens SOT..EOT."""
        device = next(self.clip.parameters()).device
        ids, eot = self.tokenize(questions)
        out = self.clip.forward_intermediates(
            text=ids.to(device), text_indices=1, normalize=False, normalize_intermediates=True
        )
        states = out["text_intermediates"][-1].float().cpu()  # (B, 77, width), after ln_final
        return [states[i, : int(eot[i]) + 1].clone() for i in range(len(questions))]


class TextCacheManifest(dict):
    """What made a folder of cached token states (model, checkpoint hash, states, normalisation)."""

    @classmethod
    def for_tower(cls, tower: ClipTextTower) -> TextCacheManifest:
        """The manifest a cache written by ``tower`` carries."""
        import open_clip

        return cls(
            model=tower.model_name,
            model_config=open_clip.get_model_config(tower.model_name),
            checkpoint=_absolute(tower.checkpoint),
            checkpoint_sha256=file_sha256(tower.checkpoint) if tower.checkpoint else None,
            random_init=tower.checkpoint is None,
            dim=tower.width,
            dtype="float32",
            states=STATES,
            question_normalisation="repsuite.nlq.annotations.normalize_question",
            file_pattern="<annotation_uid>_<query_idx>.pt",
        )


def cache_matches(out_dir: str | Path, model: str, checkpoint: str | None) -> bool:
    """True when ``out_dir/manifest.json`` says ``model`` made the cache from ``checkpoint``'s bytes."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return False
    old = json.loads(path.read_text())
    sha = file_sha256(checkpoint) if checkpoint else None
    return old.get("model") == resolve_clip_model(model) and old.get("checkpoint_sha256") == sha


def cache_text_features(
    queries: Iterable[NLQQuery],
    out_dir: str | Path,
    tower: ClipTextTower,
    batch_size: int = 256,
    overwrite: bool = False,
    shard_size: int = 0,
) -> dict[str, int]:
    """Write the token states of every query not yet in ``out_dir`` (resumable).

    The folder's ``manifest.json`` ties it to the model and checkpoint hash; a folder made by other weights
    is refused (a stale cache would silently mix features) unless ``overwrite`` recomputes it all.
    Queries without text get the states of the normalised empty question ("?"), as the token pipeline does.

    Args:
        queries: the queries (duplicates of a ``<annotation_uid>_<query_idx>`` are computed once).
        out_dir: the cache folder.
        tower: the frozen text tower.
        batch_size: questions per forward pass.
        overwrite: recompute everything, whatever the folder holds.
        shard_size: 0 writes one ``<annotation_uid>_<query_idx>.pt`` per query (the author's format); N > 0
            packs about N queries per shard file (:mod:`repsuite.nlq.text_store`; for NaQ's millions of
            queries). A folder keeps the layout and shard count of its first build (0 adds to a sharded
            folder in shards; N > 0 on a folder of per-query files is refused); each finished file (query
            or shard) is final, so a killed build resumes where it stopped.

    Returns:
        ``{"written": n, "cached": m}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {query_key(q.annotation_uid, q.query_idx): q.query or "" for q in queries}
    manifest = TextCacheManifest.for_tower(tower)
    mpath = out / MANIFEST
    old = json.loads(mpath.read_text()) if mpath.exists() and not overwrite else None
    if old is not None:
        keys = ("model", "checkpoint_sha256", "random_init", "dim", "states")
        diff = {k: (old.get(k), manifest[k]) for k in keys if old.get(k) != manifest[k]}
        if diff:
            raise FeatureError(
                f"{mpath}: this text-feature cache was made differently {diff} (cached, requested); use "
                "another folder or recompute it with overwrite"
            )
    if overwrite:
        shutil.rmtree(out / "shards", ignore_errors=True)
        mpath.unlink(missing_ok=True)
    layout = SHARDS if shard_size > 0 else FILES
    if old is not None and old.get("layout", FILES) != layout:
        if shard_size > 0:  # shards asked for, the folder holds one file per query
            raise FeatureError(
                f"{mpath}: this cache holds its queries as {old.get('layout', FILES)!r}, not {layout!r} "
                f"(shard_size={shard_size}); use another folder or recompute it with overwrite"
            )
        layout = SHARDS  # no layout asked for: a sharded folder stays sharded
    store = TextFeatureStore(out, layout, num_shards=max(1, math.ceil(len(texts) / max(shard_size, 1))))
    manifest |= {"layout": store.layout}
    if store.layout == SHARDS:
        manifest |= {"num_shards": store.num_shards, "file_pattern": SHARD_PATTERN}
    mpath.write_text(json.dumps(manifest, indent=1))  # first: a resumed build reads num_shards from it
    todo = store.group(list(texts)) if overwrite else store.missing(list(texts))
    written = sum(len(keys) for keys in todo.values())
    for keys in todo.values():
        states: dict[str, Tensor] = {}
        for i in range(0, len(keys), batch_size):
            chunk = keys[i : i + batch_size]
            batch = dict(zip(chunk, tower([texts[k] for k in chunk]), strict=True))
            if store.layout == FILES:
                store.write(batch)  # each file is final as soon as it is written
            else:
                states |= batch
        if states:
            store.write(states)  # the whole shard at once
    if written:
        log.info("%s: wrote features of %d queries (%d already cached)", out, written, len(texts) - written)
    return {"written": written, "cached": len(texts) - written}
