"""The driver-party protocol: a fixed set of verbs, used by both sides.

A request is a typed message (``comm.frames.encode_typed``): the verb, a JSON header
``{"request": id, "session": id, "args": value}`` and raw tensor frames, the ``args`` being a
value of ``tensor.payload.encode_tree`` (numbers, strings, tensors, share pairs, containers).
A reply is typed the same way, its kind one of ``Status``:

- ``queued``: the request is accepted and waits for ``position`` earlier jobs (party 0 counts);
- ``progress``: ``done`` of ``total`` blocks finished (party 0, on long calls);
- ``ok``: ``result``, a value like ``args``;
- ``error``: ``{"type", "message"}`` (plus a ``traceback`` for a shipped function's error).

Nothing is pickled except the function (and its arguments) of ``Verb.RUN``, which a party
unpickles only for an admin driver.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from securetorch.comm.frames import Buffer, FrameError, decode_typed, encode_typed
from securetorch.tensor.payload import SharePayload, decode_tree, encode_tree

MAX_ID = (1 << 53) - 1


class Verb(str, enum.Enum):
    """What a driver may ask of a party."""

    OPEN = "open"  # start a session: settings check, fresh PRG keys
    CLOSE = "close"  # end the session
    STATS = "stats"  # the session's communication counters
    RESET_STATS = "reset_stats"
    COSTS_START = "costs_start"  # start a cost report
    COSTS_STOP = "costs_stop"  # end it: this party's records
    DESCRIBE = "describe"  # a model's public facts
    FORWARD = "forward"  # call a model
    GENERATE_START = "generate_start"  # prefill a prompt, first token
    GENERATE_STEP = "generate_step"  # next token
    GENERATE_END = "generate_end"  # drop the KV cache
    INSTALL = "install"  # owner: a model's architecture and this party's shares
    UNINSTALL = "uninstall"  # owner: drop a model
    SAVE_SHARES = "save_shares"  # owner: write this party's share file
    LOAD_SHARES = "load_shares"  # owner: read it back
    RUN = "run"  # admin: a shipped function (Cluster.run)
    NETCHECK = "netcheck"  # owner, admin: time round trips and a bulk transfer between the parties
    ABORT = "abort"  # abandon a request of this session
    STOP = "stop"  # a local cluster's driver stops its parties

    @property
    def is_job(self) -> bool:
        """Jobs run one at a time, in the order party 0 sets, with fresh PRG streams."""
        return self in _JOBS

    @property
    def roles(self) -> frozenset[str]:
        return _ROLES.get(self, _EVERYONE)


_JOBS = frozenset(
    {
        Verb.OPEN,
        Verb.FORWARD,
        Verb.GENERATE_START,
        Verb.GENERATE_STEP,
        Verb.GENERATE_END,
        Verb.INSTALL,
        Verb.UNINSTALL,
        Verb.SAVE_SHARES,
        Verb.LOAD_SHARES,
        Verb.RUN,
        Verb.NETCHECK,
    }
)
_EVERYONE = frozenset({"owner", "client", "admin"})
_ROLES = {
    Verb.INSTALL: frozenset({"owner", "admin"}),
    Verb.UNINSTALL: frozenset({"owner", "admin"}),
    Verb.SAVE_SHARES: frozenset({"owner", "admin"}),
    Verb.LOAD_SHARES: frozenset({"owner", "admin"}),
    Verb.RUN: frozenset({"admin"}),
    Verb.NETCHECK: frozenset({"owner", "admin"}),
    Verb.STOP: frozenset({"admin"}),
}


class Status(str, enum.Enum):
    """The kinds of reply."""

    QUEUED = "queued"
    PROGRESS = "progress"
    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True)
class Request:
    verb: Verb
    session: int
    request: int
    args: dict[str, Any]


def _id(header: dict[str, Any], name: str, top: int) -> int:
    value = header.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
        raise FrameError(f"{name} must be an integer in 1..{top}")
    return value


def encode_request(verb: Verb, session: int, request: int, args: dict[str, Any]) -> list[Buffer]:
    tensors: list[torch.Tensor] = []
    doc = encode_tree(args, tensors)
    return encode_typed(verb.value, {"request": request, "session": session, "args": doc}, tensors)


def decode_request(frames: Sequence[Buffer], max_elements: int) -> Request:
    """A request, checked: a known verb, ids in range, arguments a well-formed dict of
    values. Raises ``FrameError`` (a malformed message) otherwise."""
    kind, header, tensors = decode_typed(frames)
    try:
        verb = Verb(kind)
    except ValueError:
        raise FrameError(f"unknown verb {kind!r}") from None
    if set(header) != {"request", "session", "args"}:
        raise FrameError("a request header holds request, session and args")
    session = _id(header, "session", (1 << 63) - 1)
    request = _id(header, "request", MAX_ID)
    try:
        args = decode_tree(header["args"], tensors, max_elements)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"malformed arguments: {exc}") from None
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise FrameError("arguments must be a dict with string keys")
    return Request(verb, session, request, args)


def encode_reply(status: Status, request: int, **fields: Any) -> list[Buffer]:
    tensors: list[torch.Tensor] = []
    header = {"request": request}
    if "result" in fields:
        header["result"] = encode_tree(fields.pop("result"), tensors)
    header.update(fields)
    return encode_typed(status.value, header, tensors)


@dataclass(frozen=True)
class Reply:
    status: Status
    request: int
    header: dict[str, Any]
    result: Any = None


def decode_reply(frames: Sequence[Buffer]) -> Reply:
    """A party's reply, checked; ``FrameError`` on anything malformed (a driver never
    runs or unpickles anything a party sends)."""
    kind, header, tensors = decode_typed(frames)
    try:
        status = Status(kind)
    except ValueError:
        raise FrameError(f"unknown reply kind {kind!r}") from None
    request = header.get("request")
    if not isinstance(request, int) or isinstance(request, bool):
        raise FrameError("a reply names its request")
    result = None
    if status is Status.OK:
        try:
            result = decode_tree(header.get("result"), tensors)
        except (ValueError, RecursionError) as exc:
            raise FrameError(f"malformed result: {exc}") from None
    elif status is Status.ERROR:
        error = header.get("error")
        if not isinstance(error, dict) or not all(isinstance(error.get(k), str) for k in ("type", "message")):
            raise FrameError("an error reply holds a type and a message")
    return Reply(status, request, header, result)


class Args:
    """Typed access to a request's arguments: a wrong or missing one is a ``ValueError``
    naming it; an argument the verb does not take is refused too."""

    def __init__(self, verb: Verb, values: dict[str, Any], allowed: Sequence[str]) -> None:
        extra = sorted(set(values) - set(allowed))
        if extra:
            raise ValueError(f"{verb.value} takes no argument {extra[0]!r}")
        self.verb, self.values = verb, values

    def _get(self, name: str, types: tuple[type, ...], what: str, default: Any = ...) -> Any:
        value = self.values.get(name, default)
        if value is ... or not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{self.verb.value}: argument {name} must be {what}")
        return value

    def text(self, name: str, default: Any = ...) -> str:
        return self._get(name, (str,), "a string", default)

    def optional_text(self, name: str) -> str | None:
        return self._get(name, (str, type(None)), "a string or None", None)

    def flag(self, name: str, default: Any = ...) -> bool:
        return self._get(name, (bool,), "true or false", default)

    def integer(self, name: str) -> int:
        return self._get(name, (int,), "an integer")

    def secret(self, name: str) -> SharePayload:
        return self._get(name, (SharePayload,), "a secret (share pair)")

    def names(self, name: str) -> tuple[str, ...]:
        value = self._get(name, (list, tuple), "a list of names", [])
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.verb.value}: argument {name} must be a list of names")
        return tuple(value)

    def tensors(self, name: str, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """A dict of public tensors (moved to ``device`` when given: the party's)."""
        value = self._get(name, (dict,), "a dict of tensors", {})
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
            raise ValueError(f"{self.verb.value}: argument {name} must map names to tensors")
        return value if device is None else {k: v.to(device) for k, v in value.items()}

    def raw(self, name: str) -> Any:
        return self.values.get(name)
