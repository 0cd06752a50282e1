"""Models without a family file: their spec is read off the architecture.

The token embedding is the module HF's ``get_input_embeddings()`` returns, the blocks are
the longest ``ModuleList``, the public inputs are those of ``attention_mask``,
``token_type_ids`` and ``position_ids`` that the model's forward accepts, and a model whose
embeddings number positions from a padding index (RoBERTa-style) gets its position ids
derived on the driver from the padding pattern. A causal LM head makes a decoder that
generates. Attention runs eagerly and normalisation and activations run through the op
tables, so a model built only from supported torch functions needs no code here.

Refused with an error that says why: mixture-of-experts models (their router's top-k would
have to run inside MPC, which is not built), encoder-decoder models, and configs that would
make a party load weights of its own (pretrained backbones).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import transformers

from securetorch.models.families.base import (
    ENCODER_INPUTS,
    FamilySpec,
    SecureRMSNorm,
    base_model,
    padding_positions,
    rms_eps,
)

MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")


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
    if getattr(config, "is_encoder_decoder", False):
        raise NotImplementedError(f"securetorch: {name} is an encoder-decoder model; those are not supported yet")
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
    x / rms(x) * w (offset 0, LLaMA, Qwen, Mistral) or x / rms(x) * (1 + w) (offset 1,
    Gemma); None for anything else."""
    eps, weight = rms_eps(module), getattr(module, "weight", None)
    if eps is None or not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1 or module._buffers:
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


def _norm_swaps(model: torch.nn.Module) -> dict[str, Any]:
    """RMSNorm modules, recognised by what they compute, become the secure RMSNorm."""
    swaps: dict[str, Any] = {}
    for module in model.modules():
        name = type(module).__name__
        if name in swaps or not name.endswith("RMSNorm"):
            continue
        offset = _rms_offset(module)
        if offset is not None:
            swaps[name] = lambda original, offset=offset: SecureRMSNorm(original, offset)
    return swaps


def generic_spec(model: torch.nn.Module) -> FamilySpec:
    """The spec of a Hugging Face model no family lists, read off its architecture; a
    ``NotImplementedError`` naming the reason for one that cannot run securely."""
    name, config = type(model).__name__, getattr(model, "config", None)
    if config is None or not callable(getattr(model, "get_input_embeddings", None)):
        raise NotImplementedError(f"securetorch: {name} is not a Hugging Face transformers model")
    refuse_config(name, config)
    base = base_model(model)
    embedding = model.get_input_embeddings()
    path = _path(base, embedding) if isinstance(embedding, torch.nn.Embedding) else None
    if path is None:
        raise NotImplementedError(f"securetorch: {name} has no token embedding table (get_input_embeddings)")
    lists = [(len(m), n) for n, m in base.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise NotImplementedError(f"securetorch: {name} has no list of blocks (a ModuleList)")
    accepted = inspect.signature(model.forward).parameters
    inputs = tuple(i for i in ENCODER_INPUTS if i in accepted)
    container = base.get_submodule(path.rpartition(".")[0]) if "." in path else base
    derived = padding_positions if _numbers_from_padding(container) else None
    return FamilySpec(
        name=name,
        classes=(name,),
        embeddings=path,
        blocks=max(lists, key=lambda item: item[0])[1],
        swaps=_norm_swaps(model),
        inputs=inputs,
        derived_inputs=derived if "position_ids" in inputs else None,
        causal=name.endswith("ForCausalLM") or bool(getattr(config, "is_decoder", False)),
    )


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
