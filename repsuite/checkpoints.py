"""Reading third-party weight files safely and loading them strictly, with errors that say what is wrong.

Every pretrained component in repsuite takes a local file. :func:`read_state_dict` accepts a plain state
dict (``.pt``/``.pth``/``.bin``, optionally under ``state_dict`` / ``model`` / ``params_ema`` keys or
with a ``module.`` prefix from DDP), a ``.safetensors`` file (detected by content), or a TorchScript
archive (OpenAI's CLIP release), all without unpickling arbitrary objects (``weights_only=True``).
:func:`check_keys` compares it with a module's state dict and raises one error listing missing keys,
unexpected keys and shape mismatches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from repsuite.errors import InputError

__all__ = [
    "PRETRAINED_WEIGHTS",
    "CheckpointError",
    "check_keys",
    "file_sha256",
    "read_module_weights",
    "read_pretrained",
    "read_state_dict",
    "recorded_weights",
    "write_pretrained",
]

#: The weights file of a ``save_pretrained`` folder (the Hugging Face hub layout), next to ``config.json``.
PRETRAINED_WEIGHTS = "model.safetensors"

WRAPPER_KEYS = ("state_dict", "model", "params_ema", "params")


class CheckpointError(InputError):
    """A weights file that cannot be read or does not match the model; the message names the file."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (recorded in manifests to tie outputs to the weights that made them)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path, wrapper_keys: Iterable[str] = WRAPPER_KEYS) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` state dict from a local weights file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or head[8:9] == b"{":  # 8-byte header length, then a JSON header
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        try:  # a TorchScript archive (OpenAI's CLIP release) holds its tensors without pickled code
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise CheckpointError(
                f"{path}: not a state dict readable with torch.load(weights_only=True), a .safetensors file "
                f"or a TorchScript archive ({err})"
            ) from err
    if isinstance(obj, Mapping):
        for key in wrapper_keys:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    obj = dict(obj)
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP-wrapped model
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def read_module_weights(
    path: str | Path, prefix: str, what: str, hint: str
) -> tuple[dict, dict[str, Tensor]]:
    """The hyper-parameters and the ``<prefix>.*`` weights (prefix removed) of a Lightning checkpoint.

    For the small networks repsuite trains itself and reads back into a frozen module (the judge, the shape
    network): ``what`` names the LightningModule expected, ``hint`` how to make such a checkpoint.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a checkpoint of ``what`` (no ``<prefix>.*`` weights under ``state_dict``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    lead = f"{prefix}."
    weights = ckpt.get("state_dict")
    weights = weights if isinstance(weights, dict) else {}
    state = {k[len(lead) :]: v for k, v in weights.items() if isinstance(k, str) and k.startswith(lead)}
    if not state:
        raise CheckpointError(
            f"{path}: not a {what} checkpoint (no '{prefix}.*' weights in state_dict); {hint}"
        )
    hp = ckpt.get("hyper_parameters")
    return (hp if isinstance(hp, dict) else {}), state


def check_keys(
    state: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    source: str,
    what: str,
    optional: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``expected``'s keys and shapes.

    Args:
        state: the checkpoint's tensors.
        expected: the model's state dict (or the part being loaded).
        source: the file, for the message.
        what: the model, for the message (e.g. "open_clip model 'ViT-B-16' (image tower)").
        optional: expected keys that may be absent.
        ignore: checkpoint keys, or key prefixes ending in ".", that are not the model's business.
    """
    ignore = tuple(ignore)

    def ignored(k: str) -> bool:
        return any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore)

    optional = set(optional)
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected and not ignored(k))
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: does not match {what}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(wrong)} shape mismatches {wrong[:3]}"
        )


def recorded_weights(path: str | Path | None, sha256: str | None, what: str) -> str:
    """The weights file a manifest recorded (or one given in its place), checked against the record.

    The file must exist and, when the manifest has its hash, hold the same bytes.

    Raises:
        CheckpointError: no path (random weights, which cannot be made again), a missing file, or other
            bytes than recorded, each naming ``what`` and the file.
    """
    if not path:
        raise CheckpointError(
            f"{what}: the features were made with random weights, which cannot be made again"
        )
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: weights of {what} not found")
    if sha256 and file_sha256(path) != sha256:
        raise CheckpointError(
            f"{path}: not the weights the features were made with ({what}; sha256 differs from the recorded "
            f"{sha256[:12]}…)"
        )
    return str(path)


def write_pretrained(directory: str | Path, config: Mapping, state: Mapping[str, Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (tensors copied to CPU, contiguous, unshared).

    ``config["format"]`` names the writer, so :func:`read_pretrained` can refuse another one's folder.
    """
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(directory / PRETRAINED_WEIGHTS), metadata={"format": str(config["format"])})


def read_pretrained(
    directory: str | Path,
    config: Mapping | None,
    fmt: str,
    what: str,
    error: type[Exception] = CheckpointError,
) -> dict[str, Tensor]:
    """The weights of a ``save_pretrained`` folder whose ``config.json`` (already read) has format ``fmt``.

    Raises:
        ``error``: naming the folder, when its config or weights are not those of ``what``.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not config or config.get("format") != fmt or not (directory / PRETRAINED_WEIGHTS).is_file():
        raise error(
            f"{directory}: not {what} folder (expected config.json with format {fmt!r} and "
            f"{PRETRAINED_WEIGHTS})"
        )
    return load_file(str(directory / PRETRAINED_WEIGHTS))
