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
    ``generate``; ``token_types``: the config field bounding ``token_type_ids`` (a model
    without a token-type table, GPT-2, embeds them with its token table: ``vocab_size``);
    ``secret_input``: the caller's secret, ``input_ids`` (one-hot rows through the token
    embedding) or ``pixel_values`` (fixed-point pixels, vision models); ``pooled_head``: path
    of a head whose per-position outputs are pooled at each row's last non-padding token
    (decoder sequence classifiers: the parties get that position as a public input, since
    they see only embeddings, never the token ids HF's forward would find it from);
    ``encoder_decoder``: a sequence-to-sequence model (T5): the secret encoder output stays
    in the parties, the decoder reads it through cross-attention, and a call also takes the
    decoder's secret token ids.
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
    secret_input: str = "input_ids"
    pooled_head: str | None = None
    encoder_decoder: bool = False

    @property
    def tokens(self) -> bool:
        """Whether the secret input is token ids (entering as a one-hot matrix)."""
        return self.secret_input == "input_ids"


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


def last_non_pad_token(config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Where a decoder's sequence classifier pools each row: its rightmost token that is not
    the padding token, as HF finds it from the token ids (the last position without a padding
    token). The position becomes public, as the padding pattern already is through the
    attention mask; the driver derives it, the parties see only embeddings."""
    ids = inputs["input_ids"]
    pad = config.get_text_config().pad_token_id
    if pad is None:
        if ids.shape[0] != 1:
            raise InputError("a batch of more than one sequence needs a padding token (config.pad_token_id)")
        return {"last_non_pad_token": torch.full((1,), ids.shape[1] - 1, dtype=torch.long)}
    positions = torch.arange(ids.shape[1]) * (ids != pad).long()
    return {"last_non_pad_token": positions.argmax(-1)}


def derive_all(*derivations: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """One derivation of public inputs that runs each of ``derivations`` on the call's inputs."""

    def derive(config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        derived: dict[str, Any] = {}
        for derivation in derivations:
            derived |= derivation(config, {**inputs, **derived})
        return derived

    return derive


def pixels_shape(config: Any) -> tuple[int, int, int]:
    """[channels, height, width] of a vision model's images (its config fixes them)."""
    size = getattr(config, "image_size", None)
    height, width = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (size, size)
    return getattr(config, "num_channels", 3), height, width


def generation_inputs(spec: FamilySpec, mask: torch.Tensor, first: bool) -> dict[str, torch.Tensor]:
    """The public inputs of a generation step, as the driver sends them: the attention mask of
    every position so far and, where the family takes them, positions counted over the real
    tokens (the prompt's on the first step, the new token's after). An encoder-decoder model
    takes its encoder's mask with the prompt and nothing after (its decoder's cache is its own)."""
    if spec.encoder_decoder:
        return {"attention_mask": mask} if first else {}
    inputs = {"attention_mask": mask}
    if "position_ids" in spec.inputs:  # else positions follow from the mask (ALiBi)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs["position_ids"] = positions if first else positions[:, -1:]
    return inputs


def check_pixels_shape(config: Any, shape: tuple[int, ...]) -> int:
    """The batch size of secret pixels [batch, channels, height, width], checked against a
    vision model's config (its positions are learned per patch: the size is fixed). The driver
    runs this before sending, and each party again on what it received."""
    expected = pixels_shape(config)
    if len(shape) != 4 or shape[0] < 1 or tuple(shape[1:]) != expected:
        raise InputError(f"pixel_values must have shape [batch, {', '.join(map(str, expected))}], got {list(shape)}")
    return shape[0]


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
            accepted = f"the public inputs {', '.join(spec.inputs)}" if spec.inputs else "no public inputs"
            raise InputError(
                f"{name} is not accepted by {who}: it takes its secret input and {accepted}, "
                "and returns only its declared output"
            )
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex():
            raise InputError(f"{name} must be an integer or bool tensor, got {_describe(value)}")
        width = past + length if name == "attention_mask" else length
        shape = (batch,) if name == "last_non_pad_token" else (batch, width)
        if tuple(value.shape) != shape:
            raise InputError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
        value = value.long()
        low, high = _bounds(spec, config, name, length)
        if value.numel() and (int(value.min()) < low or (high is not None and int(value.max()) >= high)):
            raise InputError(f"{name} must lie in [{low}, {high}), got {int(value.min())}..{int(value.max())}")
        checked[name] = value
    if spec.pooled_head is not None and "last_non_pad_token" not in checked:
        raise InputError(f"{who} pools at each row's last non-padding token: last_non_pad_token is needed")
    return checked


def _bounds(spec: FamilySpec, config: Any, name: str, length: int) -> tuple[int, int | None]:
    if name == "attention_mask":
        return 0, 2
    if name == "token_type_ids":
        return 0, getattr(config, spec.token_types, None) or 1
    if name == "last_non_pad_token":
        return 0, length
    return 0, max_positions(config)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor"
    return type(value).__name__
