"""``torch.nn.functional`` helpers HF models call on SharedTensors: embedding lookups with
public indices (positions, token types) or with secret token ids (``OneHotTokens``),
dropout in eval mode."""

from __future__ import annotations

from typing import Any

import torch

from securetorch.tensor.registry import implements
from securetorch.tensor.shared import SharedTensor

F = torch.nn.functional


@implements(F.embedding)
def _embedding(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    """Rows of a secret table at public indices (position ids, token type ids): share-wise."""
    indices, weight = args[0], args[1]
    if isinstance(indices, SharedTensor) or not isinstance(weight, SharedTensor):
        raise NotImplementedError(
            "securetorch: F.embedding needs public indices and a secret table; secret token ids "
            "enter as a one-hot matrix (see puma.secure)"
        )
    first, second = (s[indices] for s in weight.shares)
    return SharedTensor((first, second), weight.dtype)


@implements(F.dropout)
def _dropout(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SharedTensor:
    training = args[2] if len(args) > 2 else kwargs.get("training", True)
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    if training and p > 0:
        raise NotImplementedError("securetorch: dropout in training mode (secure inference runs in eval mode)")
    return args[0]


class OneHotTokens:
    """Secret token ids as a one-hot matrix [..., V] (a secret integer tensor), passed to a
    model's token-embedding module in place of ``input_ids``. ``F.embedding`` on it is the
    product with the secret table (exact, one truncation-free product: the one-hot entries are
    integers), so an embedding module that does more than look up rows (Gemma scales them)
    runs its own forward on the result. Any other use raises."""

    def __init__(self, onehot: SharedTensor) -> None:
        self.onehot = onehot

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.embedding and isinstance(args[0], OneHotTokens):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            max_norm = args[3] if len(args) > 3 else kwargs.get("max_norm")
            if max_norm is not None:
                raise NotImplementedError("securetorch: an embedding with max_norm rewrites its table on lookup")
            return args[0].onehot @ weight
        raise NotImplementedError(
            f"securetorch: secret token ids reach the model only through its token embedding, not {func}"
        )
