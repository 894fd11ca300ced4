"""The options of ``repsuite nlq extract-video``: a typed record and the ``--config FILE`` action."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["ExtractOptions", "OptionsFile"]


@dataclass
class ExtractOptions:
    """The options of ``repsuite nlq extract-video`` (see its ``--help`` for each)."""

    output: str
    videos: list[str] | None = None
    annotations: list[str] | None = None
    video_dir: str | None = None
    encoder: str = "open_clip"
    model: str = "ViT-B-16"
    checkpoint: str | None = None
    random_init: bool = False
    sampling: str = "center"
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 2
    dtype: str = "float32"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    overwrite: bool = False

    @classmethod
    def from_namespace(cls, ns: Any) -> ExtractOptions:
        """The options from an argparse namespace (other attributes, such as the tool's name, ignored)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})


class OptionsFile(argparse.Action):
    """``--config FILE``: option values from YAML (keys are option names, e.g. ``batch_size``).

    The file is applied where ``--config`` stands, so flags after it override it (as ``repsuite fit``).
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        """Set the file's options on the namespace; unknown names and unreadable files are errors."""
        import yaml

        try:
            content = yaml.safe_load(Path(values).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            parser.error(f"{values}: cannot read the options file ({err})")
        known = set(vars(namespace)) - {"func", self.dest}  # argparse has set every option's default
        unknown = sorted(set(content) - known) if isinstance(content, dict) else "not a mapping"
        if unknown:
            parser.error(f"{values}: unknown option(s) {unknown}; known: {sorted(known)}")
        for key, value in content.items():
            setattr(namespace, key, value)
        setattr(namespace, self.dest, values)
