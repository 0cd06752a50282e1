"""Models without a family file: their spec is read off the architecture.

The token embedding is the module HF's ``get_input_embeddings()`` returns, the blocks are
the longest ``ModuleList``, the public inputs are those of ``attention_mask``,
``token_type_ids`` and ``position_ids`` that the model's forward accepts, and a model whose
embeddings number positions from a padding index (RoBERTa-style) gets its position ids
derived on the driver from the padding pattern. A causal LM head makes a decoder that
generates. Attention runs eagerly and normalisation and activations run through the op
tables, so a model built only from supported torch functions needs no code here.

Vision models whose forward takes ``pixel_values`` get the pixels as their secret input;
decoder sequence classifiers pool at a public last non-padding position; an encoder-decoder
model whose forward takes embeddings for both halves and the encoder's output (T5) keeps its
encoder output secret in the parties and decodes from it.

Refused with an error that says why: mixture-of-experts models (their router's top-k would
have to run inside MPC, which is not built), other encoder-decoder models, and configs that
would make a party load weights of its own (pretrained backbones).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
import transformers

from securetorch.models.families.base import (
    ENCODER_INPUTS,
    FamilySpec,
    SecureRMSNorm,
    base_model,
    derive_all,
    last_non_pad_token,
    padding_positions,
    rms_eps,
)

MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
SEQ2SEQ_INPUTS = ("inputs_embeds", "decoder_inputs_embeds", "encoder_outputs", "attention_mask")


def _path(root: torch.nn.Module, module: torch.nn.Module) -> str | None:
    return next((name for name, m in root.named_modules() if m is module), None)


def refuse_config(name: str, config: Any) -> None:
    """Refuse, naming the reason, a config that cannot run securely or that would make a
    party do more than build modules (a party checks this before constructing anything)."""
    experts = next((f for f in MOE_FIELDS if (getattr(config, f, 0) or 0) > 0), None)
    if experts is not None:
        raise NotImplementedError(
            f"securetorch: {name} is a mixture-of-experts model ({experts} = {getattr(config, experts)}): "
            "routing each token to its top-k experts inside MPC is not built, and routing in the clear "
            "would reveal the router's choices; it is refused"
        )
    if getattr(config, "use_pretrained_backbone", False) or getattr(config, "use_timm_backbone", False):
        raise NotImplementedError(
            f"securetorch: {name}'s config asks for a pretrained backbone, which a party would load"
        )


def _numbers_from_padding(embeddings: torch.nn.Module) -> bool:
    """RoBERTa-style embeddings: a position table whose padding row is the padding index,
    positions counted from it over non-padding tokens (RoBERTa, XLM-R, MPNet, ...)."""
    positions = getattr(embeddings, "position_embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return (
        isinstance(positions, torch.nn.Embedding) and padding_idx is not None and positions.padding_idx == padding_idx
    )


def _rms_offset(module: torch.nn.Module) -> int | None:
    """Whether ``module`` computes RMSNorm, found by running a copy on known numbers:
    x / rms(x) * w (offset 0, LLaMA, Qwen, Mistral, T5) or x / rms(x) * (1 + w) (offset 1,
    Gemma); None for anything else."""
    eps, weight = rms_eps(module), getattr(module, "weight", None)
    if eps is None or set(module._parameters) != {"weight"} or weight is None or weight.dim() != 1:
        return None
    if module._buffers:
        return None
    probe = copy.deepcopy(module).to_empty(device="cpu").float()
    with torch.no_grad():
        probe.weight.fill_(0.5)
        x = torch.linspace(-3.0, 2.0, 2 * weight.shape[0]).reshape(2, -1)
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        out = probe(x)
    for offset in (0, 1):
        if out.shape == x.shape and torch.allclose(out, normed * (0.5 + offset), atol=1e-5):
            return offset
    return None


class Activation(torch.nn.Module):
    """An activation module recognised by what it computes, run as the torch function that
    has a secure protocol (``F.gelu`` exact or tanh form, ``F.silu``, ``F.relu``)."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.function](x)


F = torch.nn.functional
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}


def _activation(module: torch.nn.Module) -> str | None:
    """Which of ``ACTIVATIONS`` a parameter-free module from ``transformers.activations``
    computes, found by running it on inputs from -1000 to 1000 (wide enough that a clipped
    GeLU does not pass for GeLU). GPT-2's ``gelu_new`` is the tanh form written with pow and
    tanh, which would cost several protocols instead of one."""
    if type(module).__module__ != "transformers.activations" or any(True for _ in module.parameters()):
        return None
    x = torch.cat([torch.linspace(-8.0, 8.0, 321), torch.tensor([-1000.0, -50.0, -12.0, 12.0, 50.0, 1000.0])]).double()
    with torch.no_grad():
        out = module(x.float()).double()
    return next((n for n, f in ACTIVATIONS.items() if torch.allclose(out, f(x), rtol=1e-6, atol=1e-6)), None)


def _recognised_swaps(model: torch.nn.Module) -> dict[str, Any]:
    """Normalisation and activation modules recognised by what they compute: RMSNorm-like
    modules (any name) become the secure RMSNorm, activation modules the torch function with a
    secure protocol. Swaps go by class, so a class is swapped only when every instance of it
    computes the same thing (instances of one class may differ, e.g. in their bounds)."""
    found: dict[str, set[Any]] = {}
    for module in model.modules():
        offset, activation = _rms_offset(module), _activation(module)
        kind = ("rms", offset) if offset is not None else ("activation", activation) if activation else None
        found.setdefault(type(module).__name__, set()).add(kind)
    swaps: dict[str, Any] = {}
    for name, kinds in found.items():
        if len(kinds) != 1 or None in kinds:
            continue
        what, value = next(iter(kinds))
        if what == "rms":
            swaps[name] = lambda original, offset=value: SecureRMSNorm(original, offset)
        else:
            swaps[name] = lambda original, activation=value: Activation(activation)
    return swaps


def generic_spec(model: torch.nn.Module) -> FamilySpec:
    """The spec of a Hugging Face model no family lists, read off its architecture; a
    ``NotImplementedError`` naming the reason for one that cannot run securely."""
    name, config = type(model).__name__, getattr(model, "config", None)
    if config is None or not callable(getattr(model, "get_input_embeddings", None)):
        raise NotImplementedError(f"securetorch: {name} is not a Hugging Face transformers model")
    refuse_config(name, config)
    base = base_model(model)
    accepted = inspect.signature(model.forward).parameters
    encoder_decoder = "decoder_inputs_embeds" in accepted  # (T5's encoder alone, T5EncoderModel, is an encoder)
    if encoder_decoder and not all(a in accepted for a in SEQ2SEQ_INPUTS):
        raise NotImplementedError(
            f"securetorch: {name} is an encoder-decoder model whose forward does not take "
            f"{', '.join(a for a in SEQ2SEQ_INPUTS if a not in accepted)}; it is not supported"
        )
    vision = "pixel_values" in accepted and "input_ids" not in accepted
    try:
        embedding = model.get_input_embeddings()
    except NotImplementedError:  # HF's own refusal: a model without input embeddings (ResNet, ConvNeXt)
        embedding = None
    path = (
        _path(base, embedding)
        if embedding is not None and (vision or isinstance(embedding, torch.nn.Embedding))
        else None
    )
    if path is None:
        what = (
            "no input embeddings (get_input_embeddings)"
            if vision
            else "no token embedding table (get_input_embeddings)"
        )
        raise NotImplementedError(f"securetorch: {name} has {what}; it is not supported")
    lists = [(_size(m), n) for n, m in base.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise NotImplementedError(f"securetorch: {name} has no list of blocks (a ModuleList)")
    inputs = (
        () if vision else ("attention_mask",) if encoder_decoder else tuple(i for i in ENCODER_INPUTS if i in accepted)
    )
    container = base.get_submodule(path.rpartition(".")[0]) if "." in path else base
    derived = [padding_positions] if "position_ids" in inputs and _numbers_from_padding(container) else []
    pooled = _last_token_head(model)
    if pooled is not None:
        derived.append(last_non_pad_token)
        inputs += ("last_non_pad_token",)
    return FamilySpec(
        name=name,
        classes=(name,),
        embeddings=path,
        blocks=max(lists, key=lambda item: item[0])[1],
        swaps=_recognised_swaps(model),
        inputs=inputs,
        derived_inputs=derive_all(*derived) if derived else None,
        causal=not encoder_decoder and (name in _causal_lm_classes() or bool(getattr(config, "is_decoder", False))),
        token_types="type_vocab_size" if hasattr(config, "type_vocab_size") else "vocab_size",
        secret_input="pixel_values" if vision else "input_ids",
        pooled_head=pooled,
        encoder_decoder=encoder_decoder,
    )


def _causal_lm_classes() -> set[str]:
    """The classes transformers itself lists as causal language models (``AutoModelForCausalLM``:
    ``*ForCausalLM``, ``GPT2LMHeadModel``, ...)."""
    names = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return {n for value in names for n in ((value,) if isinstance(value, str) else value)}


def _size(blocks: torch.nn.ModuleList) -> int:
    """What a list of blocks weighs: its parameter count (the model's main stack holds the most)."""
    return sum(p.numel() for p in blocks.parameters())


def _last_token_head(model: torch.nn.Module) -> str | None:
    """A decoder's sequence-classification head (HF's ``score``, pooled at each row's last
    non-padding token, which HF's forward finds from token ids the parties never see)."""
    head = getattr(model, "score", None)
    if type(model).__name__.endswith("ForSequenceClassification") and isinstance(head, torch.nn.Linear):
        return "score"
    return None


def generic_class(name: Any) -> type | None:
    """The transformers model class ``name``, if it is one (a subclass of ``PreTrainedModel``
    in transformers' own namespace; never an import of a name a driver picks)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or len(name) > 100:
        return None
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # a lazy import that fails (a missing optional backend)
        return None
    return cls if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) else None
