"""Reading weight files safely: which format a file is, and its contents, with errors that say what is wrong.

Two formats: PyTorch checkpoints (``torch.save``; the official files) are read with ``weights_only=True``, so
that no pickled code runs; safetensors files (ours) hold tensors and a string-to-string metadata record.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

TORCH = "torch"
SAFETENSORS = "safetensors"

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = b"\x80"  # torch.save's legacy format starts with a pickle: PROTO opcode, protocol 2 .. 5
_PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")


def detect_format(path: str | os.PathLike) -> str:
    """TORCH or SAFETENSORS, from the first bytes of the file (the name's suffix is not trusted)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is a directory or a special file, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC):
        return TORCH
    # safetensors: an 8-byte little-endian header length, then the JSON header (checked before the pickle opcode:
    # the header length may start with any byte)
    if len(head) == 9 and head[8:9] == b"{":
        header_end = 8 + int.from_bytes(head[:8], "little")
        if header_end > size:
            raise CheckpointError(f"{path} is a truncated safetensors file: its header ends at byte {header_end}")
        return SAFETENSORS
    if head[:1] == _PICKLE_PROTO and head[1:2] in _PICKLE_PROTOCOLS:
        return TORCH
    raise CheckpointError(
        f"{path} is not a checkpoint: neither a PyTorch checkpoint (torch.save) nor a safetensors file "
        f"(it starts with {head!r})"
    )


def read_torch_checkpoint(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, with its failures turned into CheckpointError."""
    path = Path(path)
    if detect_format(path) != TORCH:
        raise CheckpointError(f"{path} is a safetensors file, not a PyTorch checkpoint (vil.load_pretrained reads it)")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise _load_error(path, error) from error
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt: torch.load failed with: {error}") from error


def _load_error(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    message = str(error)
    if "Weights only load failed" not in message:
        return CheckpointError(f"{path} is truncated or corrupt: torch.load failed with: {message}")
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    what = f"an object of type {found.group(1)}" if found else "Python objects other than tensors and plain containers"
    return CheckpointError(
        f"{path} contains {what}, which only unpickling with arbitrary code execution can restore; vil loads "
        "weights with torch.load(weights_only=True) and refuses. If you trust the file, re-save its tensors: "
        f"torch.save(torch.load({str(path)!r}, weights_only=False)['state_dict'], 'weights.th')"
    )


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file."""
    path = Path(path)
    if detect_format(path) != SAFETENSORS:
        raise CheckpointError(f"{path} is a PyTorch checkpoint, not a safetensors file (vil.load_official reads it)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file: {error}") from error
    return tensors, metadata


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata record of a safetensors file, without reading the tensors."""
    path = Path(path)
    if detect_format(path) != SAFETENSORS:
        raise CheckpointError(f"{path} is a PyTorch checkpoint, not a safetensors file (vil.load_official reads it)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file: {error}") from error
