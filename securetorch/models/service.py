"""The party side of secure models: building a model from its public description and this
party's shares, and serving it (describe, forward, generation).

A model arrives as a class name (resolved only through the family registry), its config as
JSON, and for every parameter this party's share pair. The party builds the model on the
meta device (no weights, no init cost) with eager attention, swaps the family's modules,
checks that every parameter and buffer it needs arrived with the shape the architecture
gives it, and puts the shares in place. The unmodified HF forward then runs on
SharedTensors through the op tables. Token ids enter as a secret one-hot matrix built by
the client (checked by the parties before use, unless the owner switched the check off),
multiplied by the secret embedding table. A call returns only the declared outputs
(``families.base.DECLARED_OUTPUTS``).

In public-weight mode (``weights="public"``) the parameters are no secret: each party
opens the owner's safetensors checkpoint itself (``models.checkpoint``, checked against the
SHA-256 the owner publishes) and binds its tensors, in their own dtype, where the shares
would go; a public weight times a secret activation is then local on each share
(``tensor.arith_ops``). Input, activations, KV cache and output stay secret.

Who may do what with a model (its owner, its clients) is recorded here and enforced by the
party server (``runtime.party``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache

from securetorch.errors import InputError
from securetorch.models.families import FamilySpec, model_class, spec_for, supported_classes
from securetorch.models.families.base import (
    DECLARED_OUTPUTS,
    base_model,
    check_pixels_shape,
    check_public_inputs,
    get_path,
    max_positions,
)
from securetorch.models.families.generic import refuse_config
from securetorch.protocols import comparison as pc
from securetorch.protocols.checks import check_one_hot
from securetorch.protocols.sampling import SamplingSettings, sample
from securetorch.session import costs
from securetorch.session.context import PartyContext
from securetorch.tensor import SharedTensor
from securetorch.tensor.nn_ops import OneHotTokens
from securetorch.tensor.shared import as_fixed, settle

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
Binding = tuple[str, str, str]  # (module path, attribute, parameter key)
Buffer = tuple[str, str, torch.Tensor]  # (module path, attribute, public value)


def check_model_name(name: Any) -> str:
    """A model name: 1-128 characters of letters, digits, '_', '.', '-', not starting with a
    punctuation mark and without '..' (names become file names in share directories)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ValueError(
            f"bad model name {str(name)[:40]!r}: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


@dataclass(frozen=True)
class PublicCheckpoint:
    """Where a public-weight model's parameters come from: a safetensors file this party
    opened (its path on this party's host) and the SHA-256 the owner published for it."""

    path: str
    sha256: str


@dataclass
class InstalledModel:
    """A secure model in a party: its copy (shares in place of weights), where each
    parameter sits (to save the shares), and who may use it."""

    name: str
    owner: str
    clients: tuple[str, ...]
    check_inputs: bool
    class_name: str
    model: torch.nn.Module
    spec: FamilySpec
    bindings: list[Binding]
    buffers: list[Buffer]
    session: int | None = None  # unnamed models end with the session that installed them
    absent: tuple[str, ...] = ()  # submodules the owner's model holds as None
    checkpoint: PublicCheckpoint | None = None  # public-weight mode: where the weights come from
    fingerprint: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.fingerprint = _fingerprint(self)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def weights(self) -> str:
        """ "public" when the parameters are public tensors from a checkpoint, else "secret"."""
        return "secret" if self.checkpoint is None else "public"

    @property
    def table(self) -> torch.Tensor:
        return get_path(base_model(self.model), self.spec.embeddings).weight

    @property
    def vocab_size(self) -> int | None:
        """The one-hot width of a model whose secret input is token ids (None for pixels)."""
        return int(self.table.shape[0]) if self.spec.tokens else None

    @property
    def can_generate(self) -> bool:
        if self.spec.encoder_decoder:
            return hasattr(self.model, "lm_head") and getattr(self.config, "decoder_start_token_id", None) is not None
        return self.spec.causal and hasattr(self.model, "lm_head")

    def may_call(self, driver: str, role: str) -> bool:
        return role == "admin" or driver == self.owner or driver in self.clients

    def describe(self) -> dict[str, Any]:
        """The public facts a client needs to call the model (never its weights)."""
        return {
            "name": self.name,
            "class": self.class_name,
            "config": self.config.to_dict(),
            "vocab_size": self.vocab_size,
            "can_generate": self.can_generate,
            "inputs": list(self.spec.inputs),
            "check_inputs": self.check_inputs,
            "owner": self.owner,
            "weights": self.weights,
        }


def _fingerprint(installed: InstalledModel) -> str:
    """A digest of everything public about the model: parties compare it before a job on it,
    so they never run different computations under one job number."""
    params = {
        key: [list(value.shape), str(value.dtype)]
        for module, attr, key in installed.bindings
        if isinstance(value := getattr(installed.model.get_submodule(module), attr), torch.Tensor)
    }
    doc = {
        "name": installed.name,
        "class": installed.class_name,
        "config": installed.config.to_json_string(use_diff=False),
        "bindings": installed.bindings,
        "params": params,
        "buffers": [[m, a, list(b.shape), str(b.dtype)] for m, a, b in installed.buffers],
        "check_inputs": installed.check_inputs,
        "absent": list(installed.absent),
        "checkpoint": None if installed.checkpoint is None else installed.checkpoint.sha256,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def skeleton(
    class_name: str, config: dict[str, Any], absent: Sequence[str] = (), swap: bool = True
) -> tuple[torch.nn.Module, FamilySpec]:
    """The architecture as the parties build it, without weights (on the meta device): the
    class from the family registry, built from its config, with the submodules in ``absent``
    set to None (constructor options such as ``add_pooling_layer=False`` leave no trace in
    the config) and, with ``swap``, the family's module swaps."""
    cls = model_class(class_name)
    if not isinstance(config, dict):
        raise ValueError("a model's config travels as a JSON object (config.to_dict())")
    hf_config = cls.config_class.from_dict(config)
    hf_config._attn_implementation = "eager"
    if class_name not in supported_classes():
        refuse_config(class_name, hf_config)  # before a constructor runs
    with torch.device("meta"):
        model = cls(hf_config)
    model.eval()
    spec = spec_for(model)
    drop_absent(model, absent)
    if swap:
        for name, module in list(model.named_modules()):
            replacement = spec.swaps.get(type(module).__name__)
            if replacement is not None and name:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, replacement(module))
    return model, spec


def drop_absent(model: torch.nn.Module, absent: Sequence[str]) -> None:
    """Set the submodules at the paths in ``absent`` to None (each must exist)."""
    for path in absent:
        if not isinstance(path, str) or not path:
            raise ValueError("an absent module is named by its path")
        _module(model, path)
        parent, _, attr = path.rpartition(".")
        setattr(_module(model, parent) if parent else model, attr, None)


def absent_modules(model: torch.nn.Module, rebuilt: torch.nn.Module) -> list[str]:
    """The submodules ``rebuilt`` (from the config) has where ``model`` holds None."""
    present = dict(model.named_modules())
    absent = []
    for path, _ in rebuilt.named_modules():
        parent, _, attr = path.rpartition(".")
        if path and path not in present and parent in present and getattr(present[parent], attr, 0) is None:
            if not any(path.startswith(f"{a}.") for a in absent):
                absent.append(path)
    return absent


def structure_difference(model: torch.nn.Module, rebuilt: torch.nn.Module) -> list[str]:
    """How ``rebuilt`` differs from ``model`` in the names and shapes of its parameters and
    buffers (empty when the parties would build exactly this model)."""

    def tensors(m: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        found = {name: tuple(p.shape) for name, p in m.named_parameters(remove_duplicate=False)}
        found |= {f"buffer {name}": tuple(b.shape) for name, b in m.named_buffers(remove_duplicate=False)}
        return found

    have, built = tensors(model), tensors(rebuilt)
    problems = [f"{name} {list(shape)}: not in the architecture" for name, shape in have.items() if name not in built]
    problems += [f"{name}: missing from this model" for name in built if name not in have]
    problems += [
        f"{name}: {list(shape)} here, {list(built[name])} from the config"
        for name, shape in have.items()
        if name in built and built[name] != shape
    ]
    return problems


def matching_structure(model: torch.nn.Module, config: dict[str, Any]) -> list[str]:
    """Check, on the driver and before anything is sent, that the parties will build exactly
    ``model`` from its class and ``config``; return the submodules it holds as None
    (constructor options such as ``add_pooling_layer=False``), which the parties drop too. A
    difference raises ``ValueError`` naming the parameters and buffers that differ."""
    name = type(model).__name__
    rebuilt, _ = skeleton(name, config, swap=False)
    absent = absent_modules(model, rebuilt)
    drop_absent(rebuilt, absent)
    problems = structure_difference(model, rebuilt)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"securetorch: this {name} differs from the one its config describes, which is what the parties "
            f"build: {'; '.join(problems[:5])}{more}. Secure a model its config describes (set the config "
            "fields that change the structure, or resize_token_embeddings, rather than modules by hand)"
        )
    return absent


def parameter_bindings(
    model: torch.nn.Module, secret_of: Callable[[torch.Tensor], Any]
) -> tuple[dict[str, Any], list[Binding], list[Buffer]]:
    """What installing ``model`` sends: each parameter once as ``secret_of(parameter)`` (tied
    parameters stay one secret, under the first path that holds it), where every parameter
    sits, and the buffers (public: derived from the config, such as rotary frequencies)."""
    params: dict[str, Any] = {}
    keys: dict[int, str] = {}
    bindings: list[Binding] = []
    buffers: list[Buffer] = []
    for module_name, module in model.named_modules():
        for attr, param in module._parameters.items():
            if param is not None:
                key = keys.setdefault(id(param), f"{module_name}.{attr}".lstrip("."))
                if key not in params:
                    params[key] = secret_of(param.detach())
                bindings.append((module_name, attr, key))
        for attr, buffer in module._buffers.items():
            if buffer is not None:
                buffers.append((module_name, attr, buffer.detach()))
    return params, bindings, buffers


def public_parameters(tensors: dict[str, torch.Tensor], bindings: list[Binding]) -> dict[str, torch.Tensor]:
    """The public weight of every parameter key from a checkpoint's ``tensors``: under the key
    or under any path the key is bound to (a checkpoint saved by HF keeps a tied parameter
    under one of its names). Other tensors in the file are not used."""
    names: dict[str, list[str]] = {}
    for module_name, attr, key in bindings:
        names.setdefault(key, [key]).append(f"{module_name}.{attr}".lstrip("."))
    params = {}
    for key, candidates in names.items():
        found = next((name for name in candidates if name in tensors), None)
        if found is None:
            raise ValueError(
                f"the checkpoint holds no tensor for parameter {key!r} (looked for {sorted(set(candidates))})"
            )
        params[key] = tensors[found]
    return params


def build(
    class_name: str,
    config: dict[str, Any],
    params: dict[str, SharedTensor] | dict[str, torch.Tensor],
    bindings: list[Binding],
    buffers: list[Buffer],
    absent: Sequence[str] = (),
    device: torch.device | str = "cpu",
) -> tuple[torch.nn.Module, FamilySpec]:
    """Build the model without weights, swap modules, check and put the shares (or, in
    public-weight mode, the public tensors) in place, on the party's ``device``."""
    params = {key: _placed(value, device) for key, value in params.items()}  # type: ignore[assignment]
    buffers = [(module_name, attr, _placed(value, device)) for module_name, attr, value in buffers]
    model, spec = skeleton(class_name, config, absent)
    _check_bindings(model, params, bindings)
    _check_buffers(model, buffers)
    linear_weight = {
        (module_name, attr): isinstance(model.get_submodule(module_name), torch.nn.Linear) and attr == "weight"
        for module_name, attr, _ in bindings
    }
    untied_linear = {key for key in params if all(linear_weight[m, a] for m, a, k in bindings if k == key)}
    for param_key in untied_linear:
        if isinstance(params[param_key], SharedTensor):  # public weights stay as the checkpoint maps them
            params[param_key] = _transposed_storage(params.pop(param_key))  # type: ignore[arg-type]
    for module_name, attr, param_key in bindings:
        module = model.get_submodule(module_name)
        module._parameters.pop(attr, None)
        setattr(module, attr, params[param_key])
    for module_name, attr, value in buffers:
        model.get_submodule(module_name)._buffers[attr] = value
    for name, module in model.named_modules():
        if name:  # cost reports book each op under the innermost module running it
            module.register_forward_pre_hook(lambda *_, name=name: costs.enter_module(name))
            module.register_forward_hook(lambda *_: costs.exit_module())
    return model, spec


def _placed(value: SharedTensor | torch.Tensor, device: torch.device | str) -> SharedTensor | torch.Tensor:
    """A parameter or buffer on ``device``: a public tensor moved, a secret's two shares moved
    (a dry run's meta stand-ins stay as they are)."""
    if isinstance(value, SharedTensor):
        first, second = value.shares
        return value if first.is_meta else SharedTensor((first.to(device), second.to(device)), value.dtype)
    return value if value.is_meta else value.to(device)


def _module(model: torch.nn.Module, path: Any) -> torch.nn.Module:
    if not isinstance(path, str):
        raise ValueError("a module path must be a string")
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"the model has no module {path!r}") from None


def _check_bindings(model: torch.nn.Module, params: dict[str, Any], bindings: list[Binding]) -> None:
    """Every parameter of the architecture gets exactly one share pair of its own shape."""
    needed = {(m, a) for m, module in model.named_modules() for a, p in module._parameters.items() if p is not None}
    bound: set[tuple[str, str]] = set()
    for module_name, attr, key in bindings:
        module = _module(model, module_name)
        expected = module._parameters.get(attr) if isinstance(attr, str) else None
        if expected is None:
            raise ValueError(f"the model has no parameter {module_name}.{attr}")
        if key not in params:
            raise ValueError(f"no shares for parameter {key!r}")
        if tuple(params[key].shape) != tuple(expected.shape):
            raise ValueError(
                f"shares of {module_name}.{attr} have shape {list(params[key].shape)}, the architecture needs "
                f"{list(expected.shape)}"
            )
        if (module_name, attr) in bound:
            raise ValueError(f"parameter {module_name}.{attr} bound twice")
        bound.add((module_name, attr))
    missing = sorted(".".join(x for x in pair if x) for pair in needed - bound)
    if missing:
        raise ValueError(f"no shares for the parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unused = set(params) - {key for _, _, key in bindings}
    if unused:
        raise ValueError(f"shares for unknown parameters {sorted(unused)[:5]}")


def _check_buffers(model: torch.nn.Module, buffers: list[Buffer]) -> None:
    needed = {(m, a): b for m, module in model.named_modules() for a, b in module._buffers.items() if b is not None}
    given = set()
    for module_name, attr, value in buffers:
        expected = needed.get((module_name, attr))
        if expected is None:
            raise ValueError(f"the model has no buffer {module_name}.{attr}")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(expected.shape):
            raise ValueError(f"buffer {module_name}.{attr} must have shape {list(expected.shape)}")
        given.add((module_name, attr))
    missing = sorted(f"{m}.{a}".lstrip(".") for m, a in set(needed) - given)
    if missing:
        raise ValueError(f"the buffers {missing[:5]} are missing")


def _transposed_storage(weight: SharedTensor) -> SharedTensor:
    """The same [out, in] weight stored as [in, out]: ``F.linear`` multiplies by weight.T, and
    the int64 product of many rows is fastest on a contiguous right operand (1.7x over the
    transposed one). A weight tied to an embedding table (GPT-2's LM head) keeps the table's
    layout, stored once: the ring matmul handles both layouts (see ``ring.native_matmul``)."""
    dtype, (first, second) = weight.dtype, weight.shares
    del weight  # the caller passes its last reference: each share's old layout is freed as soon as
    first = first.t().contiguous().t()  # its new one exists (one share's size at a time, not two)
    second = second.t().contiguous().t()
    return SharedTensor((first, second), dtype)


# ----------------------------------------------------------------------------- calls


def check_onehot_shape(installed: InstalledModel, shape: tuple[int, ...]) -> tuple[int, int]:
    """(batch, length) of a client's one-hot input [batch, length, vocabulary], checked."""
    if len(shape) != 3 or shape[2] != installed.vocab_size or shape[0] < 1 or shape[1] < 1:
        raise InputError(
            f"the one-hot input must have shape [batch, sequence, {installed.vocab_size}], got {list(shape)}"
        )
    limit = max_positions(installed.config)
    if limit is not None and shape[1] > limit:
        raise InputError(f"sequence of {shape[1]} tokens exceeds the model's {limit}")
    return shape[0], shape[1]


def _checked_onehot(ctx: PartyContext, installed: InstalledModel, onehot: SharedTensor) -> None:
    if onehot.dtype != torch.int64:
        raise InputError("the one-hot input must be an integer secret")
    if installed.check_inputs:
        costs.measured("one_hot_check", lambda: check_one_hot(ctx, onehot.shares))


def _checked_prompt(
    ctx: PartyContext, installed: InstalledModel, onehot: SharedTensor, inputs: dict[str, Any]
) -> tuple[int, int, dict[str, torch.Tensor]]:
    """A client's token input, checked as every call checks it: the one-hot's shape, the
    public inputs for that batch and length, then the one-hot itself in MPC. Its batch,
    length and checked public inputs."""
    batch, length = check_onehot_shape(installed, tuple(onehot.shape))
    public = check_public_inputs(
        installed.spec, installed.config, batch, length, inputs, class_name=installed.class_name
    )
    _checked_onehot(ctx, installed, onehot)
    return batch, length, public


def _embed(installed: InstalledModel, onehot: SharedTensor) -> SharedTensor:
    """The model's own token-embedding module on the secret one-hot: its lookup is the
    one-hot x table product (exact, 1 round), and whatever else the module does (a scale)
    follows on the result."""
    module = get_path(base_model(installed.model), installed.spec.embeddings)
    return costs.measured("embedding_lookup", lambda: module(OneHotTokens(onehot)))


@contextlib.contextmanager
def _layer_progress(ctx: PartyContext, installed: InstalledModel) -> Iterator[None]:
    """Party 0 reports each finished block to the driver (which may show a progress bar)."""
    report = ctx.progress
    if report is None:
        yield
        return
    blocks = get_path(base_model(installed.model), installed.spec.blocks)
    total = len(blocks)
    handles = [
        block.register_forward_hook(lambda *_, done=i + 1: report(done, total)) for i, block in enumerate(blocks)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward(
    ctx: PartyContext,
    installed: InstalledModel,
    secret: SharedTensor,
    inputs: dict[str, Any],
    decoder: SharedTensor | None = None,
) -> tuple[str, dict[str, SharedTensor]]:
    """The model's output class name and its declared outputs on a client's secret input (the
    one-hot of its token ids, or its pixels) and public inputs (checked); a
    sequence-to-sequence model also takes the one-hot of its decoder's token ids."""
    if installed.spec.encoder_decoder != (decoder is not None):
        raise InputError(
            f"{installed.class_name} takes decoder_input_ids"
            if decoder is None
            else f"{installed.class_name} has no decoder input"
        )
    pooled = None
    if installed.spec.tokens:
        batch, _, public = _checked_prompt(ctx, installed, secret, inputs)
        pooled = public.pop("last_non_pad_token", None)
        model_inputs = {"inputs_embeds": _embed(installed, secret), "use_cache": False, **public}
        if decoder is not None:
            if check_onehot_shape(installed, tuple(decoder.shape))[0] != batch:
                raise InputError("the decoder's one-hot input must have the encoder's batch size")
            _checked_onehot(ctx, installed, decoder)
            model_inputs["decoder_inputs_embeds"] = _embed(installed, decoder)
    else:
        if not secret.dtype.is_floating_point:
            raise InputError("pixel_values must be a fixed-point (float) secret")
        batch = check_pixels_shape(installed.config, tuple(secret.shape))
        check_public_inputs(installed.spec, installed.config, batch, 0, inputs, class_name=installed.class_name)
        model_inputs = {"pixel_values": secret}
    with torch.no_grad(), _layer_progress(ctx, installed), _pooled_at(installed, pooled):
        out = installed.model(output_attentions=False, output_hidden_states=False, return_dict=True, **model_inputs)
    fields = {name: out[name] for name in DECLARED_OUTPUTS if out.get(name) is not None}
    costs.measured("outputs", lambda: settle(*fields.values()))  # owed truncations, booked as an op
    return type(out).__name__, fields


@contextlib.contextmanager
def _pooled_at(installed: InstalledModel, positions: torch.Tensor | None) -> Iterator[None]:
    """Make the family's pooled head put each row's output at ``positions`` (public) in the
    last place, where HF's forward pools when it sees embeddings instead of token ids."""
    if installed.spec.pooled_head is None:
        yield
        return

    def move(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 3:
            raise NotImplementedError(
                f"securetorch: {installed.spec.pooled_head} returns {out.dim()}-D outputs, not [batch, sequence, labels]"
            )
        picked = out[torch.arange(out.shape[0], device=out.device), positions.to(out.device)]
        return torch.cat([out[:, :-1], picked.unsqueeze(1)], dim=1)

    handle = installed.model.get_submodule(installed.spec.pooled_head).register_forward_hook(move)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Generation:
    """A generation in progress: the secret KV cache, the chosen token's secret one-hot (None
    before a sequence-to-sequence decoder's first step, which reads its public start token),
    how many positions the cache holds (public), for a sequence-to-sequence model the
    secret encoder output with the encoder's public attention mask, and the public sampling
    settings (None: greedy, a secure argmax) fixed for the whole generation."""

    cache: Any
    onehot: SharedTensor | None
    batch: int
    length: int
    encoded: dict[str, Any] = field(default_factory=dict)
    sampling: SamplingSettings | None = None


SUPPRESSED = 1 << 12
"""What a suppressed token's logit loses: it is never the argmax, and its probability is 0."""


def suppressed_tokens(installed: InstalledModel, value: Any) -> list[int]:
    """A step's public token ids to suppress, checked: distinct ids of the vocabulary, not all
    of them."""
    vocab = installed.vocab_size or 0
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError("suppress: a list of token ids")
    if len(set(value)) != len(value) or any(not 0 <= v < vocab for v in value) or len(value) >= vocab:
        raise InputError(f"suppress: distinct token ids in [0, {vocab}), fewer than all of them")
    return list(value)


def sampling_settings(value: Any) -> SamplingSettings | None:
    """A request's sampling settings (None: greedy): a JSON object of temperature, top_k,
    top_p and seed, each checked (``SamplingSettings``); anything else is refused."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"temperature", "top_k", "top_p", "seed"}:
        raise ValueError("sampling: an object of temperature, top_k, top_p and seed")
    temperature, top_p = value.get("temperature", 1.0), value.get("top_p")
    top_k, seed = value.get("top_k"), value.get("seed")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (temperature, top_p or 1.0)):
        raise ValueError("sampling: temperature and top_p are numbers")
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in (top_k, seed)):
        raise ValueError("sampling: top_k and seed are integers")
    return SamplingSettings(float(temperature), top_k, None if top_p is None else float(top_p), seed)


def start_generation(
    ctx: PartyContext,
    installed: InstalledModel,
    onehot: SharedTensor,
    inputs: dict[str, Any],
    sampling: SamplingSettings | None = None,
) -> tuple[Generation, int, dict[str, Any]]:
    """A new generation on a client's prompt (checked), with the length and public inputs of
    its first step; ``sampling`` draws each token inside MPC instead of the argmax. A
    sequence-to-sequence model encodes the prompt here, once (its output stays secret in the
    parties), and its decoder starts from its public start token."""
    if not installed.can_generate:
        raise NotImplementedError(
            f"securetorch: {installed.class_name} has no language-model head to generate with"
            + (" (or no decoder_start_token_id)" if installed.spec.encoder_decoder else "")
        )
    batch, length, public = _checked_prompt(ctx, installed, onehot, inputs)
    if not installed.spec.encoder_decoder:
        return Generation(DynamicCache(config=installed.config), onehot, batch, 0, sampling=sampling), length, public
    with torch.no_grad():
        encoder = installed.model.get_encoder()
        encoded = encoder(inputs_embeds=_embed(installed, onehot), return_dict=True, **public)
    cache = EncoderDecoderCache(DynamicCache(config=installed.config), DynamicCache(config=installed.config))
    return Generation(cache, None, batch, 0, {"encoder_outputs": encoded, **public}, sampling), 1, {}


def generate_start(
    ctx: PartyContext,
    installed: InstalledModel,
    onehot: SharedTensor,
    inputs: dict[str, Any],
    sampling: SamplingSettings | None = None,
    suppress: Sequence[int] = (),
) -> tuple[Generation, SharedTensor]:
    """The first step on a client's prompt: a new generation and the first token."""
    generation, length, public = start_generation(ctx, installed, onehot, inputs, sampling)
    return generation, step(ctx, installed, generation, length, public, suppressed_tokens(installed, suppress))


def generate_step(
    ctx: PartyContext,
    installed: InstalledModel,
    generation: Generation,
    inputs: dict[str, Any],
    suppress: Sequence[int] = (),
) -> SharedTensor:
    """One more greedy step on the previous token's secret one-hot (a sequence-to-sequence
    decoder takes no public inputs: the encoder's mask came with the prompt)."""
    limit = max_positions(installed.config)
    if limit is not None and generation.length + 1 > limit:
        raise InputError(f"generation would exceed the model's {limit} positions")
    spec = replace(installed.spec, inputs=()) if installed.spec.encoder_decoder else installed.spec
    public = check_public_inputs(
        spec, installed.config, generation.batch, 1, inputs, past=generation.length, class_name=installed.class_name
    )
    return step(ctx, installed, generation, 1, public, suppressed_tokens(installed, suppress))


def step(
    ctx: PartyContext,
    installed: InstalledModel,
    generation: Generation,
    length: int,
    public: dict[str, Any],
    suppress: Sequence[int] = (),
) -> SharedTensor:
    """Embed the pending one-hot, run the model on the secret KV cache, and pick the next
    token by a secure argmax, or draw it inside MPC (``protocols.sampling``), never one of the
    public token ids in ``suppress`` (their logits lose 2^12: HF's minimum lengths and
    suppressed tokens). Only its index leaves the parties (to the driver); its one-hot stays
    for the next step."""
    if not installed.spec.encoder_decoder:
        model_inputs = {"inputs_embeds": _embed(installed, generation.onehot), "logits_to_keep": 1, **public}
    elif generation.onehot is None:
        start = torch.full((generation.batch, 1), decoder_start(installed.config), dtype=torch.long, device=ctx.device)
        model_inputs = {**generation.encoded, "decoder_input_ids": start}
    else:
        model_inputs = {**generation.encoded, "decoder_inputs_embeds": _embed(installed, generation.onehot)}
    with torch.no_grad(), _layer_progress(ctx, installed):
        out = installed.model(
            cache=generation.cache,
            use_cache=True,
            output_attentions=False,
            output_hidden_states=False,
            return_dict=True,
            **model_inputs,
        )
    generation.length += length
    logits = out.logits[:, -1, :]
    if suppress:
        bias = torch.zeros(logits.shape[-1], device=ctx.device)
        bias[list(suppress)] = -SUPPRESSED
        logits = logits + bias  # public: local
    if generation.sampling is None:
        index, chosen = costs.measured("argmax", lambda: pc.argmax_onehot_last_dim(ctx, as_fixed(logits).shares))
    else:
        settings = generation.sampling
        draw = generation.length
        index, chosen = costs.measured("sample", lambda: sample(ctx, as_fixed(logits).shares, settings, draw))
    generation.onehot = SharedTensor((chosen[0].unsqueeze(1), chosen[1].unsqueeze(1)), torch.int64)
    return SharedTensor(index, torch.int64)


def decoder_start(config: Any) -> int:
    """The public token a sequence-to-sequence decoder starts from."""
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise NotImplementedError("securetorch: the model's config names no decoder_start_token_id")
    return int(start)
