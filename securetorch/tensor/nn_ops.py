"""``torch.nn.functional`` helpers HF models call on SharedTensors: embedding lookups with
public indices (positions, token types), dropout in eval mode."""

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
