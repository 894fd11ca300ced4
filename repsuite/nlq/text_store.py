"""Where per-query text features live on disk: one file per query, or packed shards for millions of queries.

Two layouts of a text-feature folder, told apart by its ``manifest.json`` (``"layout"``):

* ``files`` (default; the author's release format): ``<annotation_uid>_<query_idx>.pt``, one (L, D) tensor
  each. Fine for NLQ's ~20k queries; a folder of a million files (NaQ) is slow to list, copy and check.
* ``shards``: ``shards/<NNNNN>.pt``, each a ``{"<annotation_uid>_<query_idx>": (L, D) tensor}`` dict. A
  query's shard is ``crc32(key) mod num_shards`` with ``num_shards`` fixed in the manifest when the folder
  is first built, so queries added later (a new NaQ file) land in the shards they hash to and a query's
  shard never moves. Shards are rewritten whole and atomically, so a build that is killed keeps every shard
  it finished and resumes from the others. Shards are memory-mapped when read: only the states a batch
  touches are paged in.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from torch import Tensor

from repsuite.nlq.features import FeatureError, load_feature_file, save_feature_file

__all__ = ["FILES", "SHARDS", "TextFeatureStore", "query_key", "read_layout"]

FILES, SHARDS = "files", "shards"
MANIFEST = "manifest.json"


def query_key(annotation_uid: str, query_idx: int) -> str:
    """The name of a query's features: ``<annotation_uid>_<query_idx>`` (the release's file stem)."""
    return f"{annotation_uid}_{query_idx}"


def read_layout(folder: str | Path) -> tuple[str, int]:
    """``(layout, num_shards)`` of a text-feature folder from its manifest (``files`` without one)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return FILES, 0
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FeatureError(f"{path}: not valid JSON ({err})") from None
    layout = manifest.get("layout", FILES)
    if layout == FILES:
        return FILES, 0
    shards = manifest.get("num_shards")
    if layout != SHARDS or not isinstance(shards, int) or shards < 1:
        raise FeatureError(
            f"{path}: field 'layout' / 'num_shards' = {layout!r} / {shards!r}; expected 'files', or "
            "'shards' with a positive integer num_shards"
        )
    return SHARDS, shards


class TextFeatureStore:
    """Read and write the (L, D) text features of queries in either layout (module docstring).

    Args:
        folder: the text-feature folder.
        layout: ``files`` or ``shards``; None reads it from the folder's manifest.
        num_shards: shards of a new sharded folder (ignored when the manifest already fixes it).
    """

    def __init__(self, folder: str | Path, layout: str | None = None, num_shards: int = 0) -> None:
        self.folder = Path(folder)
        found, found_shards = read_layout(self.folder)
        if (self.folder / MANIFEST).is_file() and layout is not None and layout != found:
            raise FeatureError(
                f"{self.folder / MANIFEST}: this folder holds text features as {found!r}, not {layout!r}; "
                "use another folder"
            )
        self.layout = layout or found
        self.num_shards = found_shards or num_shards
        if self.layout == SHARDS and self.num_shards < 1:
            raise ValueError(f"TextFeatureStore({self.folder}): a sharded folder needs num_shards >= 1")
        self._open: dict[int, dict[str, Tensor]] = {}

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get the store pickled: reopen the shards there instead of
        # copying every memory-mapped tensor into the pickle
        return self.__dict__ | {"_open": {}}

    # ---- where a query lives
    def shard_of(self, key: str) -> int:
        """The shard a key hashes to (stable across runs and machines)."""
        return zlib.crc32(key.encode("utf-8")) % self.num_shards

    def shard_path(self, shard: int) -> Path:
        """``<folder>/shards/<NNNNN>.pt``."""
        return self.folder / "shards" / f"{shard:05d}.pt"

    def path(self, key: str) -> Path:
        """The file that holds ``key`` (its own file, or its shard)."""
        if self.layout == SHARDS:
            return self.shard_path(self.shard_of(key))
        return self.folder / f"{key}.pt"

    # ---- reading
    def _shard(self, shard: int) -> dict[str, Tensor]:
        if shard not in self._open:
            path = self.shard_path(shard)
            if not path.exists():
                self._open[shard] = {}
            else:
                try:
                    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception as err:  # corrupt or not a torch file
                    raise FeatureError(f"{path}: cannot be read as a text-feature shard ({err})") from err
                if not isinstance(data, dict):
                    raise FeatureError(f"{path}: expected a dict of query -> (L, D) tensor, got {type(data)}")
                self._open[shard] = data
        return self._open[shard]

    def has(self, key: str) -> bool:
        """Whether the features of ``key`` are stored."""
        if self.layout == SHARDS:
            return key in self._shard(self.shard_of(key))
        return self.path(key).exists()

    def not_found(self, key: str) -> str:
        """The message for a query whose features are missing (names the file)."""
        if self.layout == FILES:
            return f"{self.path(key)}: text feature file not found"
        return f"{self.path(key)}: text features of query {key!r} not found in this shard"

    def get(self, key: str) -> Tensor:
        """The (L, D) features of ``key``; errors name the file and the query."""
        if self.layout == FILES:
            return load_feature_file(self.path(key), "text feature")
        t = self._shard(self.shard_of(key)).get(key)
        if t is None:
            raise FeatureError(self.not_found(key))
        if not isinstance(t, Tensor) or t.ndim != 2 or not t.is_floating_point():
            raise FeatureError(f"{self.path(key)}: query {key!r}: expected a 2-d (tokens, dim) float tensor")
        return t

    def first(self) -> Tensor | None:
        """Any one stored tensor (to read the width), or None when the folder is empty."""
        if self.layout == FILES:
            path = next((p for p in sorted(self.folder.glob("*.pt"))), None)
            return load_feature_file(path, "text feature") if path is not None else None
        for shard in range(self.num_shards):
            data = self._shard(shard)
            if data:
                return self.get(next(iter(data)))
        return None

    # ---- writing
    def group(self, keys: list[str]) -> dict[int, list[str]]:
        """Unique keys, in order, grouped by the file that holds them (their shard; -1 with one file each)."""
        out: dict[int, list[str]] = {}
        for key in dict.fromkeys(keys):
            out.setdefault(self.shard_of(key) if self.layout == SHARDS else -1, []).append(key)
        return out

    def missing(self, keys: list[str]) -> dict[int, list[str]]:
        """The keys not yet stored, grouped as :meth:`group` does."""
        return self.group([k for k in keys if not self.has(k)])

    def write(self, items: dict[str, Tensor]) -> None:
        """Store features; with shards, every key must hash to the same shard (one atomic rewrite)."""
        if self.layout == FILES:
            for key, t in items.items():
                save_feature_file(t, self.path(key))
            return
        shards = {self.shard_of(k) for k in items}
        if len(shards) != 1:
            raise ValueError(f"TextFeatureStore.write: keys of {len(shards)} shards given; one at a time")
        shard = shards.pop()
        old = self._shard(shard)  # memory-mapped: cloned before the file is replaced
        merged = {k: v.clone() for k, v in old.items()} | {k: v.contiguous() for k, v in items.items()}
        path = self.shard_path(shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._open.pop(shard, None)  # drop the memory map of the file being replaced
        save_feature_file(merged, path)
