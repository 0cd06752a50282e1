"""Share files: one party's shares of a secure model, in safetensors, so that a party can
restart without the model owner.

``party<rank>.safetensors`` holds this party's two shares of every parameter (``key/0``,
``key/1``; a tied parameter once), the public buffers (``buffer/<module>/<attr>``), and in its
metadata the format, the model's name, owner, clients and input-check setting, the party's
rank and fixed-point setting, the class name (resolved through the family registry when
loaded) and the config as JSON. The file is created with mode 600.

A public-weight model's file holds no weights: its metadata names the checkpoint the party
opened (path and SHA-256), which ``load`` opens and checks again.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import torch

from securetorch.models import checkpoint
from securetorch.models.service import InstalledModel, PublicCheckpoint, build, check_model_name, public_parameters
from securetorch.tensor import SharedTensor
from securetorch.tensor.payload import dtype_from_name, dtype_name

SHARES_FORMAT = "securetorch-shares-2"


def shares_file(directory: str | os.PathLike[str], rank: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"party{rank}.safetensors"


def save(installed: InstalledModel, path: pathlib.Path, rank: int, frac_bits: int) -> str:
    """Write this party's shares of ``installed`` to ``path`` (mode 600); return the path."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    public = installed.checkpoint
    if public is not None and not os.path.isfile(public.path):
        raise ValueError(
            f"{installed.name!r} was installed from a checkpoint that is gone ({public.path}, a temporary one): "
            "install it with checkpoint= a file the parties keep, then save it"
        )
    for module_name, attr, param_key in [] if public is not None else installed.bindings:
        if param_key in dtypes:
            continue  # a tied parameter is stored once
        value: SharedTensor = getattr(installed.model.get_submodule(module_name), attr)
        tensors[f"{param_key}/0"], tensors[f"{param_key}/1"] = (t.contiguous().cpu() for t in value.shares)
        dtypes[param_key] = dtype_name(value.dtype)
    for module_name, attr, buffer in installed.buffers:
        tensors[f"buffer/{module_name}/{attr}"] = buffer.contiguous().cpu()
    metadata = {
        "format": SHARES_FORMAT,
        "name": installed.name,
        "owner": installed.owner,
        "clients": json.dumps(list(installed.clients)),
        "check_inputs": json.dumps(installed.check_inputs),
        "rank": str(rank),
        "frac_bits": str(frac_bits),
        "class": installed.class_name,
        "config": installed.config.to_json_string(use_diff=False),
        "bindings": json.dumps(installed.bindings),
        "dtypes": json.dumps(dtypes),
        "absent": json.dumps(list(installed.absent)),
        "checkpoint": json.dumps(None if public is None else [public.path, public.sha256]),
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.close(fd)  # the file exists with mode 600 before a byte of a share is written
    os.chmod(path, 0o600)
    save_file(tensors, str(path), metadata)
    return str(path)


def owner_of(path: str | os.PathLike[str]) -> str | None:
    """The owner a shares file at ``path`` names (None when there is no file); ``ValueError``
    for a file that is not a securetorch shares file."""
    from safetensors import safe_open

    if not os.path.lexists(path):
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta: dict[str, Any] = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} exists and is not a securetorch shares file") from exc
    if meta.get("format") != SHARES_FORMAT or not isinstance(meta.get("owner"), str):
        raise ValueError(f"{path} exists and is not a securetorch shares file of format {SHARES_FORMAT}")
    return meta["owner"]


def load(path: str | os.PathLike[str], rank: int, frac_bits: int, device: torch.device | str = "cpu") -> InstalledModel:
    """Read a party's shares file and build the model on ``device``. Refuses a file of another
    party or another fixed-point setting, of an older format, or of an unsupported class."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta: dict[str, Any] = handle.metadata() or {}
        if meta.get("format") != SHARES_FORMAT:
            found = meta.get("format", "no securetorch format")
            raise ValueError(f"{path} is not a securetorch shares file of format {SHARES_FORMAT} ({found})")
        if int(meta["rank"]) != rank:
            raise ValueError(f"{path} holds party {meta['rank']}'s shares, not party {rank}'s")
        if int(meta["frac_bits"]) != frac_bits:
            raise ValueError(f"{path} was written with frac_bits = {meta['frac_bits']}, this party uses {frac_bits}")
        dtypes = json.loads(meta["dtypes"])
        params: dict[str, Any] = {
            key: SharedTensor((handle.get_tensor(f"{key}/0"), handle.get_tensor(f"{key}/1")), dtype_from_name(dtype))
            for key, dtype in dtypes.items()
        }
        buffers = [
            (*name.removeprefix("buffer/").rsplit("/", 1), handle.get_tensor(name))
            for name in handle.keys()
            if name.startswith("buffer/")
        ]
    bindings = [tuple(b) for b in json.loads(meta["bindings"])]
    absent = tuple(json.loads(meta.get("absent", "[]")))
    source = json.loads(meta.get("checkpoint", "null"))
    public = None if source is None else PublicCheckpoint(str(source[0]), str(source[1]))
    if public is not None:
        params = public_parameters(checkpoint.open_checkpoint(public.path, public.sha256), bindings)  # type: ignore[arg-type]
    model, spec = build(meta["class"], json.loads(meta["config"]), params, bindings, buffers, absent, device)  # type: ignore[arg-type]
    return InstalledModel(
        name=check_model_name(meta["name"]),
        owner=meta["owner"],
        clients=tuple(json.loads(meta["clients"])),
        check_inputs=bool(json.loads(meta["check_inputs"])),
        class_name=meta["class"],
        model=model,
        spec=spec,
        bindings=bindings,  # type: ignore[arg-type]
        buffers=buffers,  # type: ignore[arg-type]
        absent=absent,
        checkpoint=public,
    )
