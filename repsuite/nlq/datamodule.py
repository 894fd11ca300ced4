"""``Ego4DNLQDataModule``: the official ``ego4d`` download folder as train/val/test/predict loaders.

Expected layout (what ``ego4d --output_directory ROOT --datasets annotations <sources> --benchmarks nlq
--version v2`` writes)::

    ROOT/v2/annotations/nlq_train.json, nlq_val.json, nlq_test_unannotated.json
    ROOT/v2/<source>/<video_uid>.pt     (or <clip_uid>.pt), one folder per entry of ``features``
    ROOT/v2/<text_features>/<annotation_uid>_<query_idx>.pt   (text="features", or the text="clip" cache)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, WeightedRandomSampler

from repsuite.nlq.annotations import load_nlq_annotations, merge_annotations
from repsuite.nlq.clip_text import (
    ClipTextTower,
    cache_matches,
    cache_text_features,
    clip_text_width,
    default_cache_name,
)
from repsuite.nlq.data import Ego4DNLQDataset, collate_nlq
from repsuite.nlq.features import FeatureError, FeatureSource
from repsuite.nlq.text_store import TextFeatureStore, query_key
from repsuite.nlq.transforms import Compose, SlidingWindow, VideoSplicing

__all__ = ["SPLIT_FILES", "Ego4DNLQDataModule", "read_manifest"]

SPLIT_FILES = {"train": "nlq_train.json", "val": "nlq_val.json", "test": "nlq_test_unannotated.json"}


def read_manifest(folder: Path) -> dict | None:
    """``folder/manifest.json`` (written by ``extract-video``, ``extract-text`` and the CLIP text cache)."""
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # unreadable: the folder's features simply have no known maker
        rank_zero_warn(f"{path}: not readable JSON; not recorded in checkpoints")
        return None


class Ego4DNLQDataModule(LightningDataModule):
    """Ego4D NLQ queries with pre-extracted video features.

    Args:
        root: the download folder (contains ``<version>/annotations``).
        version: release folder, ``"v1"`` or ``"v2"``.
        features: feature source folders under ``root/version``, L2-normalised per row and concatenated in
            this order (thesis: ``[slowfast8x8_r101_k400, <clip frame features>]``).
        text: ``"tokens"`` (open_clip BPE ids for the model's own trainable text encoder; needs no weights),
            ``"features"`` (precomputed ``<annotation_uid>_<query_idx>.pt`` files, the author's release
            format) or ``"clip"`` (token states of a frozen open_clip text tower, computed once in
            ``prepare_data`` and cached in that same file format).
        text_features: folder under ``root/version`` (or an absolute path) with the
            ``<annotation_uid>_<query_idx>.pt`` files; with ``text="clip"`` the cache folder, by default
            ``clip_text_<clip_model>``.
        clip_model: open_clip model name of the frozen text tower (``ViT-B-16`` in the thesis,
            ``ViT-B-16-quickgelu`` for OpenAI's weights) or a path to an open_clip model-config JSON.
        clip_checkpoint: local weights file of that model (needed with ``text="clip"``; nothing is
            downloaded).
        clip_random_init: accept a randomly initialised tower (plumbing tests only; features are meaningless).
        clip_cache_shard_size: 0 caches one ``<annotation_uid>_<query_idx>.pt`` per query (the author's
            format); N > 0 packs about N queries per shard file (:mod:`repsuite.nlq.text_store`), for NaQ's
            millions of queries. The build is resumable either way (finished files are kept).
        max_video_len: longer clips are mean-pooled to this many bins (600 in the thesis).
        temporal_position: append the 2-d temporal position feature of the author's release.
        drop_zero_length_train: drop training queries with windows of at most 1/30 s (counted, logged).
        drop_empty_query_train: drop training queries without text (counted, logged).
        sliding_window: train-time variable-length sliding window (thesis SW).
        sliding_window_ratio: (r_s, r_e) of the kept fraction; [0.4, 0.8] in the thesis.
        video_splicing: train-time video splicing (thesis VS), applied after SW when both are on.
        splice_prob: probability of splicing a sample (0.5 in the thesis).
        batch_size: training batch size (32 in the thesis).
        eval_batch_size: validation/test/predict batch size.
        num_workers: DataLoader workers.
        train_splits: annotation splits trained on, merged (``[train]``; ``[train, val]`` for a test-server
            entry, as challenge entries and the thesis's do; see ``configs/nlq/test_server.yaml``).
        train_files: further annotation files trained on, in the NLQ schema, e.g. narrations as queries from
            ``repsuite nlq naq`` (names are looked up in ``root/version/annotations``, else taken as paths).
            Their queries may share clips with the splits (same video times required).
        train_weights: how often each training source is drawn: one weight for the merged
            ``train_splits``, then one per ``train_files`` entry (each source's queries are drawn with
            replacement, with probability proportional to its weight; epochs keep the total query count).
            NaQ has ~80x more queries than NLQ, so equal weights keep NLQ from being drowned. None: every
            query once per epoch, shuffled.
        val_split: annotation split used for validation.
        test_split: annotation split used by ``test`` (needs ground truth, so ``val`` by default).
        predict_split: annotation split used by ``predict`` (the unannotated test file by default).
    """

    def __init__(
        self,
        root: str,
        version: Literal["v1", "v2"] = "v2",
        features: list[str] | None = None,
        text: Literal["tokens", "features", "clip"] = "tokens",
        text_features: str | None = None,
        clip_model: str = "ViT-B-16",
        clip_checkpoint: str | None = None,
        clip_random_init: bool = False,
        clip_cache_shard_size: int = 0,
        max_video_len: int = 600,
        temporal_position: bool = False,
        drop_zero_length_train: bool = False,
        drop_empty_query_train: bool = False,
        sliding_window: bool = False,
        sliding_window_ratio: tuple[float, float] = (0.4, 0.8),
        video_splicing: bool = False,
        splice_prob: float = 0.5,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        train_splits: list[Literal["train", "val"]] | None = None,
        train_files: list[str] | None = None,
        train_weights: list[float] | None = None,
        val_split: Literal["train", "val", "test"] = "val",
        test_split: Literal["train", "val", "test"] = "val",
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.base = Path(root) / version
        self.feature_names = list(features or ["slowfast8x8_r101_k400"])
        if text == "features" and not text_features:
            raise ValueError("Ego4DNLQDataModule: text='features' needs `text_features` (a folder name)")
        if text == "clip" and clip_checkpoint is None and not clip_random_init:
            raise ValueError(
                "Ego4DNLQDataModule: text='clip' needs `clip_checkpoint` (a local open_clip weights "
                "file); a randomly initialised frozen tower is refused unless clip_random_init=True"
            )
        #: the text feature folder under ``root/version``, the CLIP cache's default name resolved
        self.text_features = text_features or (default_cache_name(clip_model) if text == "clip" else None)
        if not (self.base / "annotations").is_dir():
            raise FileNotFoundError(
                f"{self.base / 'annotations'}: not found; `root` must be the ego4d download folder that "
                f"contains {version}/annotations/nlq_*.json"
            )
        self.sources = [FeatureSource(name, self.base / name) for name in self.feature_names]
        self.datasets: dict[str, Ego4DNLQDataset] = {}
        self.train_file_paths = [self._annotation_path(f) for f in train_files or []]
        if train_weights is not None:
            want = 1 + len(self.train_file_paths)
            if len(train_weights) != want or min(train_weights) < 0 or sum(train_weights) <= 0:
                raise ValueError(
                    f"Ego4DNLQDataModule: train_weights {train_weights}: expected {want} non-negative "
                    f"weights (the train splits, then each of the {want - 1} train_files), not all zero"
                )
        #: per training query, the index of its source (0: the splits, i: train_files[i - 1])
        self.train_sources: list[int] = []

    def __str__(self) -> str:
        # LightningDataModule.__str__ builds every dataloader; jsonargparse calls str() while linking
        # arguments, which would parse (and skip) data before prepare_data has run
        return f"{type(self).__name__}({dict(self.hparams)})"

    @property
    def video_dim(self) -> int:
        """Width of the video rows the model receives (read from the feature files)."""
        return sum(s.dim for s in self.sources) + (2 if self.hparams.temporal_position else 0)

    @property
    def max_video_len(self) -> int:
        """Bins per clip at most; the CLI links it into the model (its learned positions cover that many)."""
        return self.hparams.max_video_len

    @property
    def text_dim(self) -> int:
        """Width of precomputed text features (0 in token mode, where the model embeds the ids)."""
        if self.hparams.text == "tokens":
            return 0
        if self.hparams.text == "clip":
            return clip_text_width(self.hparams.clip_model)
        folder = self.base / self.text_features
        first = TextFeatureStore(folder).first()
        if first is None:
            raise FeatureError(f"{folder}: no <annotation_uid>_<query_idx>.pt text feature files (or shards)")
        return int(first.shape[1])

    def provenance(self) -> dict[str, Any]:
        """How this data's inputs were made, as far as the folders record it (kept in checkpoints).

        ``sources``: each feature source's name, width and its folder's manifest (``extract-video`` ones
        name the frame encoder, its weights' hash and the frame sampling); ``text``: the text mode and the
        manifest of its feature folder. :class:`~repsuite.nlq.predictor.NLQPredictor` uses them to make
        the same inputs from a video file and a question.
        """
        folder = self.base / self.text_features if self.text_features else None
        return {
            "sources": [
                {"name": s.name, "dim": s.dim, "manifest": read_manifest(s.root)} for s in self.sources
            ],
            "text": {"mode": self.hparams.text, "manifest": read_manifest(folder) if folder else None},
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint (Lightning stores it under the class name): :meth:`provenance`."""
        return {"provenance": self.provenance()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the provenance describes the folders, which are read again."""

    def predict_ground_truth(self) -> Path | None:
        """The annotation file of ``predict_split`` if it has answers (for scoring a prediction run)."""
        path = self.base / "annotations" / SPLIT_FILES[self.hparams.predict_split]
        return path if self.hparams.predict_split != "test" and path.exists() else None

    def _annotation_path(self, name: str) -> Path:
        """A train file by name in the download's annotations folder, else as a path; it must exist."""
        for path in (self.base / "annotations" / name, Path(name)):
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"Ego4DNLQDataModule: train_files entry {name!r} is neither in {self.base / 'annotations'} "
            "nor a file"
        )

    @property
    def train_splits(self) -> list[str]:
        """The annotation splits merged into the training set."""
        return list(self.hparams.train_splits or ["train"])

    def dataset(self, split: str) -> Ego4DNLQDataset:
        """The dataset of one annotation split (built once); ``"train"`` merges the splits and train files."""
        if split not in self.datasets:
            train = split == "train"
            files = [
                self.base / "annotations" / SPLIT_FILES[name]
                for name in (self.train_splits if train else [split])
            ]
            parts = [
                load_nlq_annotations(
                    path,
                    drop_zero_length=train and self.hparams.drop_zero_length_train,
                    drop_empty_query=train and self.hparams.drop_empty_query_train,
                )
                for path in files + (self.train_file_paths if train else [])
            ]
            splits = merge_annotations(parts[: len(files)])
            ann = merge_annotations([splits, *parts[len(files) :]], shared_clips=True)
            # which source each training query came from (0: the splits, i: train_files[i - 1])
            source_of = {id(q): i for i, p in enumerate([splits, *parts[len(files) :]]) for q in p.queries}
            rank_zero_info(f"[Ego4DNLQDataModule] {ann.summary()}")
            text_dir = self.base / self.text_features if self.text_features else None
            transform = self.train_transform() if train else None
            self.datasets[split] = Ego4DNLQDataset(
                ann,
                self.sources,
                text_mode="tokens" if self.hparams.text == "tokens" else "features",
                text_dir=text_dir,
                max_video_len=self.hparams.max_video_len,
                temporal_position=self.hparams.temporal_position,
                transform=transform,
            )
            # fail (val/test/predict) or skip with counts (train) now, not in the middle of an epoch
            skipped = self.datasets[split].check_files(skip_missing=train)
            if skipped:
                rank_zero_info(f"[Ego4DNLQDataModule] {split}: skipped {skipped}")
            if train:
                self.train_sources = [source_of[id(q)] for q in self.datasets[split].queries]
        return self.datasets[split]

    def train_transform(self) -> Compose | None:
        """SW then VS, as switched on (thesis Table 2.1 rows "+SW", "+VS", "+SW and VS")."""
        h = self.hparams
        steps: list = []
        if h.sliding_window:
            steps.append(SlidingWindow(h.sliding_window_ratio))
        if h.video_splicing:
            steps.append(VideoSplicing(h.splice_prob))
        return Compose(steps) if steps else None

    def prepare_data(self) -> None:
        """With ``text="clip"``: compute the token states of every query not yet in the cache folder.

        Lightning runs this once per node before ``setup`` (other ranks wait), so DDP ranks never race on
        the cache. Splits whose annotation file is absent are skipped.
        """
        h = self.hparams
        if h.text != "clip":
            return
        files = [self.base / "annotations" / f for f in SPLIT_FILES.values()] + self.train_file_paths
        queries = [q for f in files if f.exists() for q in load_nlq_annotations(f).queries]
        out = self.base / self.text_features
        if cache_matches(out, h.clip_model, h.clip_checkpoint):
            store = TextFeatureStore(out)
            if all(store.has(query_key(q.annotation_uid, q.query_idx)) for q in queries):
                return  # made by these weights: no need to build the tower
        tower = ClipTextTower(h.clip_model, h.clip_checkpoint, random_init=h.clip_random_init)
        counts = cache_text_features(queries, out, tower, shard_size=h.clip_cache_shard_size)
        rank_zero_info(f"[Ego4DNLQDataModule] CLIP text cache {out}: {counts}")

    def setup(self, stage: str) -> None:
        """Parse the annotation files the stage needs."""
        if stage == "fit":
            self.dataset("train")
            self.dataset(self.hparams.val_split)
            if self.hparams.val_split in self.train_splits:
                rank_zero_warn(
                    f"Ego4DNLQDataModule: val_split {self.hparams.val_split!r} is also trained on "
                    f"(train_splits={self.train_splits}); validation figures are not held out"
                )
        elif stage == "validate":
            self.dataset(self.hparams.val_split)
        elif stage == "test":
            self.dataset(self.hparams.test_split)
        elif stage == "predict":
            self.dataset(self.hparams.predict_split)

    def train_sampler(self) -> WeightedRandomSampler | None:
        """Draws each training source with probability ∝ its ``train_weights`` entry (None: no weights)."""
        weights = self.hparams.train_weights
        if weights is None:
            return None
        dataset = self.dataset("train")
        counts = Counter(self.train_sources)
        for i, w in enumerate(weights):
            if w > 0 and not counts[i]:
                name = "the train splits" if i == 0 else str(self.train_file_paths[i - 1])
                raise ValueError(
                    f"Ego4DNLQDataModule: train_weights[{i}] = {w} but {name} has no queries left"
                )
        per_query = torch.tensor([weights[s] / counts[s] for s in self.train_sources], dtype=torch.double)
        return WeightedRandomSampler(per_query, num_samples=len(dataset), replacement=True)

    def _loader(self, split: str, train: bool) -> DataLoader:
        h = self.hparams
        sampler = self.train_sampler() if train else None
        return DataLoader(
            self.dataset(split),
            batch_size=h.batch_size if train else h.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=h.num_workers,
            collate_fn=collate_nlq,
            persistent_workers=h.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training queries."""
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        """Validation queries in file order."""
        return self._loader(self.hparams.val_split, False)

    def test_dataloader(self) -> DataLoader:
        """Test queries (``test_split``) in file order."""
        return self._loader(self.hparams.test_split, False)

    def predict_dataloader(self) -> DataLoader:
        """Queries to predict (``predict_split``) in file order."""
        return self._loader(self.hparams.predict_split, False)
