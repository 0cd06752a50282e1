"""What a model family declares: where its token embedding and blocks are, which modules to
swap, which public inputs its calls accept, and how the driver derives public inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from securetorch.errors import InputError

ENCODER_INPUTS = ("attention_mask", "token_type_ids", "position_ids")
"""The public inputs of BERT-like encoders (what their tokenizers return, besides input_ids)."""

DECLARED_OUTPUTS = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits")
"""What a secure call may return, where the model computes it: never hidden states of
intermediate layers, attentions, caches or losses."""


@dataclass(frozen=True)
class FamilySpec:
    """A supported model family.

    ``classes``: the HF class names it applies to (any other transformers model gets a spec
    read off its architecture, ``generic.generic_spec``); ``embeddings``:
    attribute path (from the base model) of the token embedding table, used as one-hot x
    table; ``blocks``: path of the ModuleList of layers (for progress); ``swaps``: module
    class name -> factory of its secure replacement; ``inputs``: the public keyword inputs a
    call accepts besides ``input_ids``; ``derived_inputs``: driver-side derivation of public
    inputs from the call's (token ids stay with the driver); ``causal``: decoder models that
    ``generate``; ``token_types``: the config field bounding ``token_type_ids``.
    """

    name: str
    classes: tuple[str, ...]
    embeddings: str
    blocks: str
    swaps: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = field(default_factory=dict)
    inputs: tuple[str, ...] = ENCODER_INPUTS
    derived_inputs: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    causal: bool = False
    token_types: str = "type_vocab_size"


class SecureRMSNorm(torch.nn.Module):
    """An RMSNorm module computed by the secure RMSNorm protocol (``F.rms_norm``, whose
    variance keeps 8 extra fractional bits: the small activations a transformer normalises,
    such as Gemma 2's attention outputs, need them). ``offset`` 1 is Gemma's ``1 + weight``.
    The weight is installed later, in place of the original's."""

    def __init__(self, original: torch.nn.Module, offset: int = 0) -> None:
        super().__init__()
        self.weight = original.weight
        self.eps = float(rms_eps(original))
        self.offset = offset

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = (hidden_states.shape[-1],)
        if self.offset:
            return torch.nn.functional.rms_norm(hidden_states, shape, None, self.eps) * (self.weight + self.offset)
        return torch.nn.functional.rms_norm(hidden_states, shape, self.weight, self.eps)


def rms_eps(module: torch.nn.Module) -> float | None:
    """The epsilon of an RMSNorm-like module (HF names it ``eps`` or ``variance_epsilon``)."""
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def get_path(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module a family's paths start from: the model itself or its ``base_model_prefix``
    child (a task model's backbone)."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix) if prefix and hasattr(model, prefix) else model


def padding_positions(config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """RoBERTa-style position ids, which count from padding_idx + 1 over non-padding tokens:
    derived by the driver from the token ids (the padding pattern is public through the
    attention mask) unless the call gives its own."""
    if inputs.get("position_ids") is not None:
        return {}
    ids = inputs["input_ids"]
    padding_idx = config.pad_token_id
    not_pad = (ids != padding_idx).int()
    return {"position_ids": (torch.cumsum(not_pad, dim=1) * not_pad + padding_idx).long()}


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's positions allow (None when unbounded)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_public_inputs(
    spec: FamilySpec,
    config: Any,
    batch: int,
    length: int,
    inputs: Mapping[str, Any],
    past: int = 0,
    class_name: str = "",
) -> dict[str, torch.Tensor]:
    """The public inputs of a call on ``batch`` sequences of ``length`` new tokens (after
    ``past`` cached ones), checked: only names the family declares, integer or bool tensors of
    the right shape, values in range. Anything else raises ``InputError`` naming it. The driver
    runs this before sending, and each party again on what it received."""
    who = f"a secure {class_name or spec.name} model"
    checked: dict[str, torch.Tensor] = {}
    for name, value in inputs.items():
        if value is None:
            continue
        if name not in spec.inputs:
            accepted = ", ".join(spec.inputs)
            raise InputError(
                f"{name} is not accepted by {who}: it takes input_ids and the public inputs {accepted}, "
                "and returns only its declared output"
            )
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex():
            raise InputError(f"{name} must be an integer or bool tensor, got {_describe(value)}")
        width = past + length if name == "attention_mask" else length
        if tuple(value.shape) != (batch, width):
            raise InputError(f"{name} must have shape [{batch}, {width}], got {list(value.shape)}")
        value = value.long()
        low, high = _bounds(spec, config, name)
        if value.numel() and (int(value.min()) < low or (high is not None and int(value.max()) >= high)):
            raise InputError(f"{name} must lie in [{low}, {high}), got {int(value.min())}..{int(value.max())}")
        checked[name] = value
    return checked


def _bounds(spec: FamilySpec, config: Any, name: str) -> tuple[int, int | None]:
    if name == "attention_mask":
        return 0, 2
    if name == "token_type_ids":
        return 0, getattr(config, spec.token_types, None) or 1
    return 0, max_positions(config)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor"
    return type(value).__name__
