"""Secrets crossing the process boundary, and the typed values that carry them.

The driver *deals* a tensor it holds (``private(t)``) into replicated shares, one pair per
party (``deal``); a party turns its pair into a ``SharedTensor`` and back
(``to_shared``/``from_shared``); the driver *reconstructs* a secret output from the three
pairs, checking that the replicated shares agree (``reconstruct``).

Values travel as a JSON document plus raw tensor frames (``encode_tree``/``decode_tree``),
never as pickles: ``None``, booleans, numbers, strings, lists, tuples, dicts, tensors,
sets, ``torch.Size``, dtypes, ``CommStats`` and share pairs (``SharePayload``). Anything else is
refused with a ``TypeError`` naming its type. A ``Private`` cannot be pickled at all, so one
hidden in an unsupported container never travels in the clear.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from securetorch.comm.stats import CommStats
from securetorch.prg import KEY_BYTES, AesPrg, new_key
from securetorch.ring import encode
from securetorch.tensor.shared import SharedTensor, decode_as, scale_bits

RANKS = (0, 1, 2)
DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: Any) -> torch.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    return DTYPES[name]


class Private:
    """Marks a driver-held tensor that must enter the parties secret-shared (see ``private``)."""

    def __init__(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        self.tensor = torch.as_tensor(tensor)
        self.dtype = dtype or (self.tensor.dtype if self.tensor.is_floating_point() else torch.get_default_dtype())

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a private() value cannot be pickled: pass it directly, or in a list, tuple or dict, "
            "so that it is dealt as shares instead of travelling in the clear"
        )

    def __repr__(self) -> str:
        return f"Private(shape={tuple(self.tensor.shape)}, dtype={self.dtype})"


def private(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> Private:
    """Pass a tensor to the parties secretly: the driver splits it into shares and each party
    receives only its pair, as a ``SharedTensor``. Plain arguments are public."""
    return Private(tensor, dtype)


@dataclass(frozen=True)
class SeededShare:
    """A share that is an AES-CTR stream: its 16-byte key and the shape (expanded by the party)."""

    key: bytes
    shape: tuple[int, ...]

    def expand(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return AesPrg(self.key, device=device).int64(self.shape)


Share = torch.Tensor | SeededShare


@dataclass(frozen=True)
class SharePayload:
    """One party's pair of shares of one secret (tensors or PRG seeds), with the logical dtype."""

    first: Share
    second: Share
    dtype: torch.dtype

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The pair on ``device`` (seeded shares expanded there)."""
        first, second = (
            s.expand(device) if isinstance(s, SeededShare) else s.to(device) for s in (self.first, self.second)
        )
        return first, second

    @property
    def shape(self) -> tuple[int, ...]:
        share = self.first
        return tuple(share.shape)


# ----------------------------------------------------------------------------- driver side


def value_bound_bits(dtype: torch.dtype, frac_bits: int, compare_bits: int) -> int:
    """Secrets of ``dtype`` must stay below 2^bits in magnitude (as reals) for comparisons and
    truncation to be exact: 2^(compare_bits - 1 - f) for floats, 2^(compare_bits - 1) for
    integers and bools."""
    return compare_bits - 1 - scale_bits(dtype, frac_bits)


def deal(value: Private, frac_bits: int, compare_bits: int) -> list[SharePayload]:
    """Replicated shares of a driver-held tensor, one pair per party. x_0 and x_1 are fresh
    AES streams, so they travel as 16-byte keys; only x_2 = x - x_0 - x_1 travels in full
    (to P_1 and P_2). Refuses values that are not finite or leave the range in which the
    protocols are exact, naming the bound."""
    tensor = value.tensor.detach()
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError("a private input must be finite (it holds NaN or infinity)")
    bits = value_bound_bits(value.dtype, frac_bits, compare_bits)
    largest = float(tensor.abs().max()) if tensor.numel() else 0.0
    if largest >= 2.0**bits:
        raise ValueError(
            f"a private input is outside the fixed-point range where comparisons and truncation are "
            f"exact: |x| must be below 2^{bits} (compare_bits = {compare_bits}, frac_bits = "
            f"{scale_bits(value.dtype, frac_bits)} for {dtype_name(value.dtype)}), got |x| = {largest:.4g}"
        )
    x = encode(tensor, scale_bits(value.dtype, frac_bits))
    shape = tuple(x.shape)
    seeded = [SeededShare(new_key(), shape), SeededShare(new_key(), shape)]
    parts: list[Share] = [*seeded, x - seeded[0].expand() - seeded[1].expand()]
    return [SharePayload(parts[r], parts[(r + 1) % 3], value.dtype) for r in RANKS]


def reconstruct(trio: list[SharePayload], frac_bits: int) -> torch.Tensor:
    """The plaintext of a secret from the three parties' pairs, checking that P_r's second
    share equals P_{r+1}'s first (else ``ValueError``)."""
    pairs = [p.tensors() for p in trio]
    if len({p.dtype for p in trio}) != 1:
        raise ValueError("the parties returned different dtypes for one secret")
    for r in RANKS:
        if pairs[r][0].shape != pairs[(r + 1) % 3][1].shape or not torch.equal(pairs[r][1], pairs[(r + 1) % 3][0]):
            raise ValueError("the parties returned inconsistent shares")
    return decode_as(pairs[0][0] + pairs[1][0] + pairs[2][0], frac_bits, trio[0].dtype)


def reconstruct_tree(results: list[Any], frac_bits: int) -> list[Any]:
    """The three parties' results with every share pair replaced by its plaintext, rebuilt
    from the three pairs in the same place (``ValueError`` when the parties disagree)."""
    pairs: list[list[SharePayload]] = [[], [], []]
    for r in RANKS:
        map_structure(results[r], lambda v, r=r: pairs[r].append(v) if isinstance(v, SharePayload) else None)
    if len({len(p) for p in pairs}) != 1:
        raise ValueError("the parties returned different numbers of secret outputs")
    try:
        plain = [reconstruct(list(trio), frac_bits) for trio in zip(*pairs, strict=True)]
    except ValueError as exc:
        raise ValueError(f"the parties returned inconsistent shares: {exc}") from None

    def substitute(results_r: Any) -> Any:
        queue = iter(plain)
        return map_structure(results_r, lambda v: next(queue) if isinstance(v, SharePayload) else v)

    return [substitute(results[r]) for r in RANKS]


# ----------------------------------------------------------------------------- party side


def to_shared(value: SharePayload, device: torch.device | str = "cpu") -> SharedTensor:
    """The party's ``SharedTensor`` of a payload it received, on its ``device``."""
    return SharedTensor(value.tensors(device), value.dtype)


def arrive(value: Any, device: torch.device) -> Any:
    """An argument as its party computes on it: a payload becomes a ``SharedTensor`` and a
    public tensor moves, both to the party's ``device``; anything else is unchanged."""
    if isinstance(value, SharePayload):
        return to_shared(value, device)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return value


def from_shared(value: SharedTensor) -> SharePayload:
    """A result's payload: its pair on the CPU, as it crosses the process boundary."""
    first, second = value.shares
    return SharePayload(first.contiguous().cpu(), second.contiguous().cpu(), value.dtype)


# ----------------------------------------------------------------------------- structures


def map_structure(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every leaf of nested tuples, lists and dicts (named tuples kept)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_structure(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_structure(v, fn) for v in value)
    if isinstance(value, dict):
        items = {k: map_structure(v, fn) for k, v in value.items()}
        try:
            return type(value)(**items)  # dataclass-like mappings (HF ModelOutput)
        except TypeError:
            return type(value)(items)
    return fn(value)


def deal_tree(value: Any, frac_bits: int, compare_bits: int) -> list[Any]:
    """Three copies of ``value``, each ``Private`` leaf replaced by that party's share pair."""
    dealt: dict[int, list[SharePayload]] = {}

    def split(leaf: Any) -> Any:
        if isinstance(leaf, Private) and id(leaf) not in dealt:
            dealt[id(leaf)] = deal(leaf, frac_bits, compare_bits)
        return leaf

    map_structure(value, split)
    return [map_structure(value, lambda v, r=r: dealt[id(v)][r] if isinstance(v, Private) else v) for r in RANKS]


def encode_tree(value: Any, tensors: list[torch.Tensor]) -> Any:
    """A JSON-able description of ``value``; its tensors are appended to ``tensors``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, torch.Tensor) and not isinstance(value, SharedTensor):
        tensors.append(value.detach().cpu())
        return {"tensor": len(tensors) - 1}
    if isinstance(value, SharePayload):
        return {
            "secret": [_encode_share(value.first, tensors), _encode_share(value.second, tensors)],
            "dtype": dtype_name(value.dtype),
        }
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, torch.dtype):
        return {"dtype": dtype_name(value)}
    if isinstance(value, CommStats):
        return {"stats": asdict(value)}
    if isinstance(value, list):
        return [encode_tree(v, tensors) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode_tree(v, tensors) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode_tree(k, tensors), encode_tree(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"set": [encode_tree(v, tensors) for v in value]}
    raise TypeError(
        f"cannot send a {type(value).__name__}: values crossing the process boundary are None, bools, "
        "numbers, strings, tensors, secrets, and lists, tuples, sets and dicts of them"
    )


def _encode_share(share: Share, tensors: list[torch.Tensor]) -> Any:
    if isinstance(share, SeededShare):
        return {"seed": share.key.hex(), "shape": list(share.shape)}
    tensors.append(share)
    return {"tensor": len(tensors) - 1}


def decode_tree(doc: Any, tensors: list[torch.Tensor], max_elements: int = 1 << 40) -> Any:
    """The value ``encode_tree`` described; ``ValueError`` on anything malformed. A seeded
    share may stand for at most ``max_elements`` elements (a receiver caps what a 16-byte
    key can make it allocate, as it caps message sizes)."""
    return _decode(doc, tensors, max_elements)


def _decode(doc: Any, tensors: list[torch.Tensor], max_elements: int) -> Any:
    if doc is None or isinstance(doc, (bool, int, float, str)):
        return doc
    if isinstance(doc, list):
        return [_decode(v, tensors, max_elements) for v in doc]
    if not isinstance(doc, dict) or len(doc) not in (1, 2):
        raise ValueError("malformed value")
    if "tensor" in doc and len(doc) == 1:
        return _tensor_at(doc["tensor"], tensors)
    if "secret" in doc and len(doc) == 2:
        shares = doc["secret"]
        if not isinstance(shares, list) or len(shares) != 2:
            raise ValueError("malformed secret")
        first, second = (_decode_share(s, tensors, max_elements) for s in shares)
        if tuple(first.shape) != tuple(second.shape):
            raise ValueError("the two shares of a secret differ in shape")
        return SharePayload(first, second, dtype_from_name(doc["dtype"]))
    if len(doc) != 1:
        raise ValueError("malformed value")
    [(tag, body)] = doc.items()
    if tag == "tuple" and isinstance(body, list):
        return tuple(_decode(v, tensors, max_elements) for v in body)
    if tag == "dict" and isinstance(body, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in body):
        return {_key(_decode(k, tensors, max_elements)): _decode(v, tensors, max_elements) for k, v in body}
    if tag == "set" and isinstance(body, list):
        return {_key(_decode(v, tensors, max_elements)) for v in body}
    if tag == "size" and isinstance(body, list) and all(isinstance(n, int) for n in body):
        return torch.Size(body)
    if tag == "dtype":
        return dtype_from_name(body)
    if tag == "stats" and isinstance(body, dict) and set(body) == set(asdict(CommStats())):
        return CommStats(**body)
    raise ValueError(f"malformed value (tag {tag!r})")


def _key(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        raise ValueError("unhashable dict key")
    return value


def _tensor_at(index: Any, tensors: list[torch.Tensor]) -> torch.Tensor:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(tensors):
        raise ValueError("tensor reference out of range")
    return tensors[index]


def _decode_share(doc: Any, tensors: list[torch.Tensor], max_elements: int) -> Share:
    if isinstance(doc, dict) and set(doc) == {"tensor"}:
        share = _tensor_at(doc["tensor"], tensors)
        if share.dtype != torch.int64:
            raise ValueError("a share must be an int64 tensor")
        return share
    if isinstance(doc, dict) and set(doc) == {"seed", "shape"}:
        key, shape = doc["seed"], doc["shape"]
        if not isinstance(key, str) or len(key) != 2 * KEY_BYTES or not isinstance(shape, list):
            raise ValueError("malformed seeded share")
        if len(shape) > 16 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ValueError("malformed seeded share shape")
        if math.prod(shape) > max_elements:
            raise ValueError(f"a seeded share of {math.prod(shape)} elements (at most {max_elements})")
        try:
            return SeededShare(bytes.fromhex(key), tuple(shape))
        except ValueError:
            raise ValueError("malformed seeded share key") from None
    raise ValueError("malformed share")
