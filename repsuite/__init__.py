"""repsuite: Lightning library for Ego4D NLQ and face swapping with a generative prior.

``import repsuite`` is cheap: the public classes are imported on first attribute access (PEP 562), so
the CLI's ``--help`` and notebook start-up do not pay for torch, Lightning and friends until needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from repsuite._version import __version__

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "MultiHeadCrossAttention": "repsuite.ops",
    "modulated_conv2d": "repsuite.ops",
    "multi_head_attention": "repsuite.ops",
    "fused_leaky_relu": "repsuite.ops",
    "reference_ops": "repsuite.ops",
    "RepsuiteCLI": "repsuite.cli",
    "NLQModule": "repsuite.nlq",
    "NLQPredictor": "repsuite.nlq",
    "Ego4DNLQDataModule": "repsuite.nlq",
    "FaceSwapModule": "repsuite.faceswap",
    "FaceSwapDataModule": "repsuite.faceswap",
    "FaceSwapper": "repsuite.faceswap",
    "IdentityModule": "repsuite.faceswap",
    "FaceIdentityDataModule": "repsuite.faceswap",
    "load_stylegan2": "repsuite.faceswap",
    "load_arcface": "repsuite.faceswap",
}
_SUBMODULES = ("ops", "cli")

__all__ = ["__version__", *sorted(_LAZY), *_SUBMODULES]

if TYPE_CHECKING:  # pragma: no cover
    from repsuite import cli as cli
    from repsuite import ops as ops
    from repsuite.cli import RepsuiteCLI as RepsuiteCLI
    from repsuite.faceswap import FaceIdentityDataModule as FaceIdentityDataModule
    from repsuite.faceswap import FaceSwapDataModule as FaceSwapDataModule
    from repsuite.faceswap import FaceSwapModule as FaceSwapModule
    from repsuite.faceswap import FaceSwapper as FaceSwapper
    from repsuite.faceswap import IdentityModule as IdentityModule
    from repsuite.faceswap import load_arcface as load_arcface
    from repsuite.faceswap import load_stylegan2 as load_stylegan2
    from repsuite.nlq import Ego4DNLQDataModule as Ego4DNLQDataModule
    from repsuite.nlq import NLQModule as NLQModule
    from repsuite.nlq import NLQPredictor as NLQPredictor
    from repsuite.ops import MultiHeadCrossAttention as MultiHeadCrossAttention
    from repsuite.ops import fused_leaky_relu as fused_leaky_relu
    from repsuite.ops import modulated_conv2d as modulated_conv2d
    from repsuite.ops import multi_head_attention as multi_head_attention
    from repsuite.ops import reference_ops as reference_ops


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"repsuite.{name}")
    raise AttributeError(f"module 'repsuite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
