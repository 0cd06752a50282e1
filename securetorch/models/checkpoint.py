"""Public weights: a safetensors checkpoint that each party opens itself, checked against the
SHA-256 its model owner publishes (``puma.secure(model, weights="public")``).

A party memory-maps the file copy-on-write (``torch.UntypedStorage.from_file``): every
tensor keeps the checkpoint's own dtype (bf16, fp16, fp32), pages are read when first used,
and local parties that open one file share its pages in the page cache. Nothing of it is
ever written back. The file is read twice in all: once to check its digest, once as the
model uses it.

``write`` is the owner's side for clusters on one machine: the parameters (a tied one
once) saved as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct

import safetensors.torch
import torch

DIGEST_CHUNK = 1 << 24
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint that is missing, altered (its SHA-256 differs) or not safetensors."""


def sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> str:
    """Save ``tensors`` (public weights, in their own dtypes) as safetensors; their SHA-256."""
    safetensors.torch.save_file({k: v.detach().contiguous() for k, v in tensors.items()}, os.fspath(path))
    return sha256(path)


def open_checkpoint(path: str | os.PathLike[str], expected_sha256: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at ``path``, memory-mapped copy-on-write, after checking
    that the file's SHA-256 is ``expected_sha256``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    found = sha256(path)
    if found != expected_sha256.lower():
        raise CheckpointError(f"{path} has SHA-256 {found}, not the {expected_sha256} its owner published")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header_bytes = struct.unpack("<Q", handle.read(8))[0]
        if header_bytes > size - 8:
            raise CheckpointError(f"{path} is not a safetensors file")
        try:
            header = json.loads(handle.read(header_bytes))
        except ValueError as error:
            raise CheckpointError(f"{path} is not a safetensors file") from error
    storage = torch.UntypedStorage.from_file(os.fspath(path), shared=False, nbytes=size)
    base = 8 + header_bytes
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry.get("dtype"))
        start, end = entry["data_offsets"]
        if dtype is None or not 0 <= start <= end <= size - base:
            raise CheckpointError(f"{path}: tensor {name!r} has an unknown dtype or lies outside the file")
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, base + start, (end - start,))
        if (base + start) % dtype.itemsize:  # safetensors aligns its data, but need not: a copy then
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(entry["shape"])
    return tensors


__all__ = ["CheckpointError", "open_checkpoint", "sha256", "write"]
