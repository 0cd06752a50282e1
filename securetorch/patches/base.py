"""What a model family needs declared: where its token embedding and blocks are, which
modules to swap, and how the driver prepares the public inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class FamilySpec:
    """A supported model family.

    ``classes``: HF class names; ``embeddings``: attribute path (from the model) of the token
    embedding table, used as one-hot x table; ``blocks``: path of the ModuleList of layers
    (for progress); ``swaps``: module class name -> factory of its secure replacement;
    ``public_inputs``: driver-side preparation of public keyword inputs from the call's
    (token ids stay with the driver); ``causal``: decoder models that ``generate``.
    """

    name: str
    classes: tuple[str, ...]
    embeddings: str
    blocks: str
    swaps: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = field(default_factory=dict)
    public_inputs: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    causal: bool = False


def get_path(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def base_model(model: torch.nn.Module, spec: FamilySpec) -> torch.nn.Module:
    """The module whose token embedding ``spec.embeddings`` names (the model itself or its
    ``base_model_prefix`` child)."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix) if prefix and hasattr(model, prefix) else model
