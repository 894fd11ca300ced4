"""``repsuite env``: the facts a bug report needs (versions, devices, kernel settings)."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import sys

_PACKAGES = (
    "repsuite", "torch", "torchvision", "lightning", "torchmetrics", "einops", "timm",
    "open_clip_torch", "kornia", "wandb", "jsonargparse",
)  # fmt: skip


def collect() -> dict[str, object]:
    """Return versions of repsuite's stack, the visible devices and the ops switch state."""
    import torch

    from repsuite.ops.config import ENV_VAR, use_reference_ops

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
        "reference_ops": use_reference_ops(),
        "reference_ops_env": os.environ.get(ENV_VAR),
        "wandb_mode": os.environ.get("WANDB_MODE"),
    }


def main(argv: list[str]) -> int:
    """Print :func:`collect` as text or JSON; returns the exit code."""
    parser = argparse.ArgumentParser(prog="repsuite env", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ns = parser.parse_args(argv)
    info = collect()
    if ns.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "packages":
            for pkg, ver in value.items():  # type: ignore[union-attr]
                print(f"{pkg:>18}: {ver or 'not installed'}")
        else:
            print(f"{key:>18}: {value}")
    return 0
