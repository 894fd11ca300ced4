"""One switch that forces every op in :mod:`repsuite.ops` onto its plain reference path.

The fast paths are exact reformulations of the reference maths; this switch exists so a user can rule
them out when a result looks wrong, and so tests can compare the two. It is read at call time, so it
also applies to modules built before it was flipped.

Set ``REPSUITE_REFERENCE_OPS=1`` in the environment, call :func:`set_reference_ops`, or scope it::

    with repsuite.ops.reference_ops():
        out = multi_head_attention(q, k, v)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ENV_VAR", "reference_ops", "set_reference_ops", "use_reference_ops"]

ENV_VAR = "REPSUITE_REFERENCE_OPS"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _from_env() -> bool:
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of 1/0, true/false, yes/no, on/off")


_USE_REFERENCE: bool = _from_env()


def use_reference_ops() -> bool:
    """Return True when ops must take their reference path."""
    return _USE_REFERENCE


def set_reference_ops(enabled: bool = True) -> None:
    """Force (``True``) or release (``False``) the reference paths for the whole process."""
    global _USE_REFERENCE
    _USE_REFERENCE = bool(enabled)


@contextmanager
def reference_ops(enabled: bool = True) -> Iterator[None]:
    """Context manager that sets the switch for its body and restores the previous value."""
    previous = _USE_REFERENCE
    set_reference_ops(enabled)
    try:
        yield
    finally:
        set_reference_ops(previous)
