"""Dry runs: torch code on stand-in secrets, with no parties, that lists what the secure path
would refuse (``puma.check`` runs a model's forward this way).

While a ``DryRun`` is active, the current party context (a ``contextvars.ContextVar``, so
other threads are not affected) is a stand-in whose rank and fixed-point setting can be read,
so local encodings run; any other use (links, PRG streams, dealer turns) raises
``ReachedCommunication``. Secrets are stand-ins: SharedTensors whose shares are meta
tensors (a shape and a dtype: no memory, nothing computed, even for a 128k x 4096 table) and
which present themselves as CPU tensors, so a model's public tensors (masks, positions) stay
real and its public control flow runs as it would in a party.

Every torch function on a SharedTensor still goes to the handler in the op tables
(``registry.HANDLERS``) that a party would run, through ``SharedTensor.__torch_function__``:

* a function with no handler is recorded as a problem;
* a handler that refuses its arguments (``NotImplementedError``, or ``ValueError`` for a
  public value the ring cannot encode) is recorded with its own reason;
* a handler that reaches an interactive protocol, or that fails on a stand-in for another
  reason (meta shares meeting a real public tensor), has made its checks by then;

and in each of these cases the result is computed on plain stand-ins (meta tensors first,
then zeros on the CPU for functions that need values; float stand-ins where an integer one
meets a float one) and wrapped as a stand-in secret of the result's shape and dtype, so the
run continues and finds every later problem too. Python control flow on a secret (``bool``,
``item``, ``tolist``, ...) is recorded, since it would reveal the secret, and continues with
a fixed value (False, zeros). Nothing is ever sent, and no party is needed.

The problems are found by the handlers the parties run, with their own argument checks, so
the list cannot drift from the op tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from securetorch.ring import DEFAULT_COMPARE_BITS, DEFAULT_FRAC_BITS
from securetorch.session.context import activate
from securetorch.tensor.registry import Handler, func_name, type_names
from securetorch.tensor.shared import SharedTensor

_T = torch.Tensor
_MATERIALISE = 1 << 22  # CPU stand-ins up to this many elements are real zeros (in-place ops work on them)
# Python values of a secret: data-dependent control flow, which would reveal it.
_REVEALING = {
    _T.__bool__, _T.item, _T.tolist, _T.__int__, _T.__float__, _T.__index__, _T.__complex__, _T.numpy,
    _T.__array__,
}  # fmt: skip
NO_PROTOCOL = "no secure protocol"
REVEALS = "would reveal a secret: Python control flow on it, or a Python value of it"


class ReachedCommunication(Exception):
    """A dry run's handler needed the network or the parties' randomness: an interactive
    protocol, whose result the dry run computes on plain stand-ins instead."""


class DryRunError(RuntimeError):
    """A dry run could not continue: a function failed on plain stand-ins too."""


@dataclass(frozen=True)
class Problem:
    """Something the secure path cannot run: the torch ``function`` (as torch names it), the
    ``module`` path where it ran ("" at the model's top level), the argument types of its
    first call, why (``detail``), and how many calls in that module hit it."""

    function: str
    module: str
    arguments: str
    detail: str
    count: int = 1

    def __str__(self) -> str:
        calls = f" [{self.count} calls]" if self.count > 1 else ""
        arguments = f"({self.arguments})" if self.arguments else ""
        return f"{self.module or '(model)'}: {self.function}{arguments} — {self.detail}{calls}"


class _StandInContext:
    """The party context while a dry run is active: rank, device (the CPU its stand-in shares
    pose on) and fixed-point setting can be read; anything else means the handler reached
    communication. ``recorder`` is the dry run, which ``SharedTensor.__torch_function__`` hands
    every outermost op."""

    def __init__(self, run: DryRun) -> None:
        self.rank = 0
        self.device = torch.device("cpu")
        self.frac_bits = DEFAULT_FRAC_BITS
        self.compare_bits = DEFAULT_COMPARE_BITS
        self.network = None
        self.recorder = run
        self.progress = None

    def __getattr__(self, name: str) -> Any:
        raise ReachedCommunication(name)


class DryRun:
    """The state of one dry run: the module path stack, pushed and popped by forward hooks
    (``costs.enter_module``/``exit_module``, as the parties' hooks do), and the problems found.

    It takes the cost recorder's place in the stand-in context: ``depth`` > 0 while a handler
    runs (the torch functions it calls on shares are part of its op), ``measure`` runs a
    protocol that is not a torch function (``costs.measured``), ``dispatch`` an outermost op."""

    def __init__(self) -> None:
        self.depth = 0
        self.modules: list[str] = []
        self.context = _StandInContext(self)
        self._found: dict[tuple[str, str], list[Any]] = {}

    @property
    def module(self) -> str:
        """The path of the innermost module running now ("" at the top level)."""
        return self.modules[-1] if self.modules else ""

    @property
    def problems(self) -> tuple[Problem, ...]:
        """One problem per (function, module) pair, in order of first occurrence."""
        return tuple(Problem(*first, count) for first, count in self._found.values())

    def record(self, function: str, arguments: str, detail: str) -> None:
        """Count a problem in the module running now (its first call's arguments and detail kept)."""
        key = (function, self.module)
        entry = self._found.get(key)
        if entry is None:
            self._found[key] = [(function, self.module, arguments, detail), 1]
        else:
            entry[1] += 1

    def measure(self, op: str, call: Any) -> Any:
        """A protocol that is not a torch function (``costs.measured``): the torch functions it
        calls are dispatched one by one; a protocol itself stops where it needs the parties."""
        return call()

    def dispatch(self, func: Any, handler: Handler | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one outermost torch function on stand-ins: its handler for real, recording a
        refusal or a missing handler; where the handler stops, the result on plain stand-ins."""
        if func in _REVEALING:
            self.record(func_name(func), type_names(args, kwargs), REVEALS)
            return False if func is _T.__bool__ else self._plain_result(func, args, kwargs)
        if handler is None:
            self.record(func_name(func), type_names(args, kwargs), NO_PROTOCOL)
            return self._plain_result(func, args, kwargs)
        self.depth += 1
        try:
            return handler(func, args, kwargs)
        except (NotImplementedError, ValueError) as refusal:
            if "'Meta' backend" not in str(refusal):  # not a kernel that meta tensors lack
                self.record(func_name(func), type_names(args, kwargs), _reason(refusal))
        except ReachedCommunication:
            pass  # an interactive protocol: the handler made its checks
        except Exception as error:
            if not _stand_in_limit(error):  # the handler itself fails here: so would a party's
                self.record(func_name(func), type_names(args, kwargs), f"the secure handler fails: {_reason(error)}")
        finally:
            self.depth -= 1
        return self._plain_result(func, args, kwargs)

    def _plain_result(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``func`` on plain stand-ins (meta tensors, then CPU zeros; integer secrets as floats
        when they meet floats), its tensors wrapped as stand-in secrets."""
        first_error: Exception | None = None
        integers, floats_present = _kinds((args, kwargs))
        # an integer secret meeting floats (a one-hot times a table) becomes a float stand-in
        # first: meta kernels do not check that a product's operands share a dtype
        order = (True, False) if integers and floats_present else (False, True) if integers else (False,)
        for device in ("meta", "cpu"):
            for floats in order:
                originals: dict[int, tuple[torch.Tensor, SharedTensor]] = {}
                try:
                    plain_args = _plain(args, device, floats, originals)
                    plain_kwargs = _plain(kwargs, device, floats, originals)
                    return _secret_like(func(*plain_args, **plain_kwargs), originals)
                except Exception as error:
                    first_error = first_error or error
        raise DryRunError(
            f"the dry run cannot continue past {func_name(func)}({type_names(args, kwargs)}) in "
            f"{self.module or '(model)'}: {type(first_error).__name__}: {first_error}"
        ) from first_error


def secret(shape: Any, dtype: torch.dtype = torch.float32) -> SharedTensor:
    """A stand-in secret of ``shape`` and logical ``dtype`` (meta shares, posing as CPU)."""
    share = torch.empty(tuple(shape), dtype=torch.int64, device="meta")
    return SharedTensor((share, share), dtype)


@contextlib.contextmanager
def dry_run() -> Iterator[DryRun]:
    """Make a new ``DryRun`` current in this thread (or task) inside the ``with`` block."""
    run = DryRun()
    with activate(run.context):  # type: ignore[arg-type]  # a stand-in for the party context
        yield run


def _stand_in_limit(error: Exception) -> bool:
    """Whether ``error`` comes from a stand-in rather than from the handler: a meta share
    meeting a real public tensor, or a kernel, copy or numpy view that meta tensors lack (the
    handler has made its checks by then)."""
    text = str(error).lower()
    return "meta" in text or "device" in text


def _reason(error: Exception) -> str:
    text = str(error)
    for prefix in ("securetorch: ", "securetorch "):
        text = text.removeprefix(prefix)
    return text if isinstance(error, NotImplementedError) else f"{type(error).__name__}: {text}"


def _kinds(value: Any) -> tuple[bool, bool]:
    """Whether ``value`` holds an integer (or bool) secret, and whether it holds a float tensor."""
    if isinstance(value, SharedTensor):
        return not value.dtype.is_floating_point, value.dtype.is_floating_point
    if isinstance(value, torch.Tensor):
        return False, value.is_floating_point()
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    found = [_kinds(v) for v in items]
    return any(i for i, _ in found), any(f for _, f in found)


def _plain(value: Any, device: str, floats: bool, originals: dict[int, tuple[torch.Tensor, SharedTensor]]) -> Any:
    """``value`` with every SharedTensor replaced by a plain stand-in on ``device`` (public
    tensors moved there too for meta), remembering which stand-in came from which secret."""
    if isinstance(value, SharedTensor):
        dtype = torch.float32 if floats and not value.dtype.is_floating_point else value.dtype
        if device == "meta":
            plain = torch.empty(value.shape, dtype=dtype, device="meta")
        elif value.numel() <= _MATERIALISE:
            plain = torch.zeros(value.shape, dtype=dtype)
        else:
            plain = torch.zeros((), dtype=dtype).expand(value.shape)
        originals[id(plain)] = (plain, value)
        return plain
    if isinstance(value, torch.Tensor):
        return value.to("meta") if device == "meta" else value
    if type(value) in (list, tuple):
        return type(value)(_plain(v, device, floats, originals) for v in value)
    if type(value) is dict:
        return {k: _plain(v, device, floats, originals) for k, v in value.items()}
    return value


def _secret_like(result: Any, originals: dict[int, tuple[torch.Tensor, SharedTensor]]) -> Any:
    """Tensors of a plain result as stand-in secrets (a stand-in returned as such, by an
    in-place function, is its own secret again)."""
    if isinstance(result, torch.Tensor):
        known = originals.get(id(result))
        if known is not None and known[0] is result:
            return known[1]
        return secret(result.shape, result.dtype)
    if isinstance(result, (list, tuple)):
        items = [_secret_like(r, originals) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else type(result)(items)
    return result


__all__ = ["DryRun", "DryRunError", "Problem", "ReachedCommunication", "dry_run", "secret"]
