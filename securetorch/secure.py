"""``puma.secure(hf_model)``: a drop-in secure version of a Hugging Face model.

Driver side (the model owner at ``secure()`` time, the data owner at call time): the model's
architecture (class and config) travels to the three parties, every parameter is
secret-shared (each party receives only its pair), and the parties build their copy with
eager attention and the family's module swaps. Calls take the original's arguments: token
ids become a secret one-hot matrix built by the driver (so no equality tests over the
vocabulary are needed); masks, token types and positions are public. The output is
reconstructed on the driver only.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import pathlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from securetorch.comm.stats import total
from securetorch.patches import FamilySpec, spec_for
from securetorch.patches.base import base_model, get_path
from securetorch.protocols import comparison as pc
from securetorch.runtime import costs
from securetorch.runtime.cluster import Cluster, LocalCluster, private
from securetorch.runtime.context import current
from securetorch.tensor import SharedTensor
from securetorch.tensor.shared import as_fixed

_DEFAULT: LocalCluster | None = None
_IDS = itertools.count(1)


def default_cluster() -> LocalCluster:
    """The process-wide LocalCluster that ``secure(model)`` uses when given none (closed at exit)."""
    global _DEFAULT
    if _DEFAULT is None or _DEFAULT._closed:
        _DEFAULT = LocalCluster()
    return _DEFAULT


@dataclass(frozen=True)
class StepCost:
    """The cost of one generation step: seconds on the driver's clock, bytes sent by all
    parties, rounds."""

    seconds: float
    bytes: int
    rounds: int


@dataclass
class _PartyModel:
    """What a party keeps between calls: its copy of the model (shares in place of weights),
    and where each parameter sits (to save the shares)."""

    model: torch.nn.Module
    spec: FamilySpec
    bindings: list[tuple[str, str, str]]
    buffers: list[tuple[str, str, torch.Tensor]]


# ----------------------------------------------------------------------------- party side


def _install(
    key: str,
    cls: type,
    config: Any,
    params: dict[str, SharedTensor],
    bindings: list[tuple[str, str, str]],
    buffers: list[tuple[str, str, torch.Tensor]],
) -> None:
    current().store[key] = _build(cls, config, params, bindings, buffers)


def _build(
    cls: type,
    config: Any,
    params: dict[str, SharedTensor],
    bindings: list[tuple[str, str, str]],
    buffers: list[tuple[str, str, torch.Tensor]],
) -> _PartyModel:
    """Build the model without weights, swap modules, and put the shares in place."""
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = cls(config)
    model.eval()
    spec = spec_for(model)
    for name, module in list(model.named_modules()):
        swap = spec.swaps.get(type(module).__name__)
        if swap is not None and name:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, swap(module))
    linear_weight = {
        (module_name, attr): isinstance(model.get_submodule(module_name), torch.nn.Linear) and attr == "weight"
        for module_name, attr, _ in bindings
    }
    untied_linear = {key for key in params if all(linear_weight[m, a] for m, a, k in bindings if k == key)}
    for param_key in untied_linear:
        params[param_key] = _transposed_storage(params.pop(param_key))
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
    return _PartyModel(model, spec, bindings, buffers)


def _model_state(key: str) -> _PartyModel:
    state = current().store.get(key)
    if not isinstance(state, _PartyModel):
        raise KeyError(f"party {current().rank} holds no secured model named {key!r}")
    return state


def _describe(key: str) -> dict[str, Any]:
    """The public facts a driver needs to call a secured model it did not secure itself."""
    state = _model_state(key)
    table = get_path(base_model(state.model, state.spec), state.spec.embeddings).weight
    return {
        "cls": type(state.model),
        "config": state.model.config,
        "vocab_size": int(table.shape[0]),
        "has_lm_head": hasattr(state.model, "lm_head"),
    }


SHARES_FORMAT = "securetorch-shares-1"


def shares_file(directory: str, rank: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"party{rank}.safetensors"


def _save_shares(key: str, directory: str) -> str:
    """Write this party's shares of a secured model (and its public buffers and
    architecture) to ``directory/party<rank>.safetensors``; return the path."""
    from safetensors.torch import save_file

    state, ctx = _model_state(key), current()
    tensors: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    for module_name, attr, param_key in state.bindings:
        if param_key in dtypes:
            continue  # a tied parameter is stored once
        value: SharedTensor = getattr(state.model.get_submodule(module_name), attr)
        tensors[f"{param_key}/0"], tensors[f"{param_key}/1"] = (t.contiguous() for t in value.shares)
        dtypes[param_key] = str(value.dtype).removeprefix("torch.")
    for module_name, attr, buffer in state.buffers:
        tensors[f"buffer/{module_name}/{attr}"] = buffer.contiguous()
    cls = type(state.model)
    metadata = {
        "format": SHARES_FORMAT,
        "name": key,
        "rank": str(ctx.rank),
        "frac_bits": str(ctx.frac_bits),
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "config": state.model.config.to_json_string(use_diff=False),
        "bindings": json.dumps(state.bindings),
        "dtypes": json.dumps(dtypes),
    }
    path = shares_file(directory, ctx.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata)
    path.chmod(0o600)
    return str(path)


def load_shares_file(path: str | pathlib.Path, rank: int, frac_bits: int) -> tuple[str, _PartyModel]:
    """Read a party's shares file (``_save_shares``) and build the model; its name and state.
    Refuses a file of another party or another fixed-point setting, or an unsupported class."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("format") != SHARES_FORMAT:
            raise ValueError(f"{path} is not a securetorch shares file")
        if int(meta["rank"]) != rank:
            raise ValueError(f"{path} holds party {meta['rank']}'s shares, not party {rank}'s")
        if int(meta["frac_bits"]) != frac_bits:
            raise ValueError(f"{path} was written with frac_bits = {meta['frac_bits']}, this party uses {frac_bits}")
        module_name, _, qualname = meta["class"].partition(":")
        cls = getattr(importlib.import_module(module_name), qualname)
        spec_for(cls)  # only the supported families
        config = cls.config_class.from_dict(json.loads(meta["config"]))
        dtypes = json.loads(meta["dtypes"])
        params = {
            key: SharedTensor((handle.get_tensor(f"{key}/0"), handle.get_tensor(f"{key}/1")), getattr(torch, dtype))
            for key, dtype in dtypes.items()
        }
        buffers = [
            (*name.removeprefix("buffer/").rsplit("/", 1), handle.get_tensor(name))
            for name in handle.keys()
            if name.startswith("buffer/")
        ]
    bindings = [tuple(b) for b in json.loads(meta["bindings"])]
    return meta["name"], _build(cls, config, params, bindings, buffers)  # type: ignore[arg-type]


def _load_shares(directory: str) -> str:
    ctx = current()
    name, state = load_shares_file(shares_file(directory, ctx.rank), ctx.rank, ctx.frac_bits)
    ctx.store[name] = state
    return name


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


def _embed(state: _PartyModel, onehot: SharedTensor) -> SharedTensor:
    table = get_path(base_model(state.model, state.spec), state.spec.embeddings).weight
    return costs.measured("embedding_lookup", lambda: onehot @ table)  # secret one-hot x table: exact, 1 round


@contextlib.contextmanager
def _layer_progress(state: _PartyModel) -> Iterator[None]:
    """Party 0 reports each finished block to the driver (which may show a progress bar)."""
    report = current().progress
    if report is None:
        yield
        return
    blocks = get_path(base_model(state.model, state.spec), state.spec.blocks)
    total = len(blocks)
    handles = [
        block.register_forward_hook(lambda *_, done=i + 1: report(done, total)) for i, block in enumerate(blocks)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(key: str, onehot: SharedTensor, public: dict[str, Any]) -> Any:
    state: _PartyModel = current().store[key]  # type: ignore[assignment]
    with torch.no_grad(), _layer_progress(state):
        return state.model(inputs_embeds=_embed(state, onehot), use_cache=False, return_dict=True, **public)


def _generation_key(key: str) -> str:
    """Where a party keeps a generation's KV cache and next one-hot."""
    return f"{key}/generation"


def _generate_step(key: str, onehot: SharedTensor | None, public: dict[str, Any]) -> SharedTensor:
    """One greedy step: embed the prompt (first step) or the previous token's secret one-hot,
    run the model on the secret KV cache, and pick the next token by a secure argmax.
    Only its index leaves the parties (to the driver); its one-hot stays for the next step."""
    store = current().store
    state: _PartyModel = store[key]  # type: ignore[assignment]
    generation = store.setdefault(_generation_key(key), {})
    if onehot is not None:
        from transformers import DynamicCache

        generation["cache"] = DynamicCache(config=state.model.config)
        generation["onehot"] = onehot
    with torch.no_grad(), _layer_progress(state):
        out = state.model(
            inputs_embeds=_embed(state, generation["onehot"]),
            cache=generation["cache"],
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,
            **public,
        )
    logits = out.logits[:, -1, :]
    index, chosen = costs.measured("argmax", lambda: pc.argmax_onehot_last_dim(current(), as_fixed(logits).shares))
    generation["onehot"] = SharedTensor((chosen[0].unsqueeze(1), chosen[1].unsqueeze(1)), torch.int64)
    return SharedTensor(index, torch.int64)


def _uninstall(key: str) -> None:
    store = current().store
    store.pop(key, None)
    store.pop(_generation_key(key), None)


def _end_generation(key: str) -> None:
    current().store.pop(_generation_key(key), None)


# ----------------------------------------------------------------------------- driver side


class SecureModel:
    """A model whose weights live secret-shared in three parties; call it like the original.

    ``secure(model)`` makes one from a plaintext model (the model owner);
    ``SecureModel.by_name(name, cluster)`` attaches to one the parties already hold (another
    driver, or after ``load_shares``), without ever seeing the weights."""

    def __init__(self, model: torch.nn.Module, cluster: Cluster | None = None, name: str | None = None) -> None:
        if model.training:
            raise ValueError("secure() needs a model in eval mode: call model.eval() first")
        spec = spec_for(model)
        vocab_size = get_path(base_model(model, spec), spec.embeddings).weight.shape[0]
        self._describe_as(type(model), model.config, vocab_size, hasattr(model, "lm_head"), cluster, name)
        params: dict[str, Any] = {}
        keys: dict[int, str] = {}
        bindings: list[tuple[str, str, str]] = []
        buffers: list[tuple[str, str, torch.Tensor]] = []
        for module_name, module in model.named_modules():
            for attr, param in module._parameters.items():
                if param is None:
                    continue
                param_key = keys.setdefault(id(param), f"{module_name}.{attr}".lstrip("."))
                if param_key not in params:
                    params[param_key] = private(param.detach(), dtype=torch.float32)
                bindings.append((module_name, attr, param_key))
            for attr, buffer in module._buffers.items():
                if buffer is not None:  # derived from the public config (positions, rotary frequencies)
                    buffers.append((module_name, attr, buffer.detach()))
        self.cluster.run(_install, self.key, type(model), model.config, params, bindings, buffers)

    def _describe_as(
        self, cls: type, config: Any, vocab_size: int, has_lm_head: bool, cluster: Cluster | None, name: str | None
    ) -> None:
        self.spec = spec_for(cls)
        self.config = config
        self.class_name = cls.__name__
        self.can_generate = self.spec.causal and has_lm_head
        self.generation_costs: list[StepCost] = []
        self.cluster = cluster or default_cluster()
        self.key = name or f"secure-model-{next(_IDS)}"
        self.vocab_size = vocab_size
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @classmethod
    def by_name(cls, name: str, cluster: Cluster) -> SecureModel:
        """The secured model the parties hold under ``name``: its public architecture comes
        from the parties; the weights stay with them."""
        facts = cluster.run(_describe, name)[0]
        model = cls.__new__(cls)
        model._describe_as(facts["cls"], facts["config"], facts["vocab_size"], facts["has_lm_head"], cluster, name)
        return model

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("input_ids must be an integer tensor")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, sequence], got {tuple(input_ids.shape)}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got {int(input_ids.min())}..{int(input_ids.max())}"
            )
        if self.max_positions is not None and input_ids.shape[1] > self.max_positions:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens exceeds the model's {self.max_positions}")

    def _public_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in inputs.items() if k != "input_ids" and v is not None}
        if self.spec.public_inputs is not None:
            public.update(self.spec.public_inputs(self, inputs))
        return public

    def onehot(self, input_ids: torch.Tensor) -> Any:
        """The secret one-hot matrix of the token ids (integers: the product with the table is exact)."""
        return private(torch.nn.functional.one_hot(input_ids.long(), self.vocab_size), dtype=torch.int64)

    def __call__(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if input_ids is None:
            raise ValueError("pass input_ids (token ids are secret-shared by the driver as one-hot rows)")
        self._check_ids(input_ids)
        public = self._public_inputs({"input_ids": input_ids, **kwargs})
        return self.cluster.run(_forward, self.key, self.onehot(input_ids), public)[0]

    forward = __call__

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        eos_token_id: int | None = None,
        attention_mask: torch.Tensor | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding with a secure argmax over the vocabulary and a secret KV cache.

        Each new token costs one token's pass. The chosen token's one-hot stays secret in the
        parties and feeds the next step; only the driver learns the tokens. Returns prompt +
        new tokens, as HF's greedy ``generate`` does (left-pad batched prompts; after
        ``eos_token_id`` a row continues with ``pad_token_id``, or eos when there is none).
        ``generation_costs`` then holds each step's seconds, bytes (all parties) and rounds.
        """
        if not self.can_generate:
            raise NotImplementedError(f"securetorch: {self.class_name} has no language-model head to generate with")
        self._check_ids(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        pad = pad_token_id if pad_token_id is not None else eos_token_id
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool)
        new_tokens: list[torch.Tensor] = []
        self.generation_costs = []
        try:
            for step in range(max_new_tokens):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                public = {"attention_mask": mask, "position_ids": positions if step == 0 else positions[:, -1:]}
                onehot = self.onehot(input_ids) if step == 0 else None
                before, started = total(self.cluster.stats()), time.perf_counter()
                token = self.cluster.run(_generate_step, self.key, onehot, public)[0]
                seconds = time.perf_counter() - started
                cost = total(self.cluster.stats()) - before
                self.generation_costs.append(StepCost(seconds, cost.bytes_sent, cost.rounds))
                if eos_token_id is not None:
                    token = torch.where(unfinished, token, torch.full_like(token, pad))
                    unfinished &= token != eos_token_id
                new_tokens.append(token)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                if not bool(unfinished.any()):
                    break
        finally:
            if not self.cluster._closed:
                self.cluster.run(_end_generation, self.key)
        return torch.cat([input_ids, torch.stack(new_tokens, dim=1).to(input_ids.dtype)], dim=1)

    def close(self) -> None:
        """Drop the parties' copy of this model."""
        if not self.cluster._closed:
            self.cluster.run(_uninstall, self.key)


def secure(model: torch.nn.Module, cluster: Cluster | None = None, name: str | None = None) -> SecureModel:
    """Secret-share ``model``'s weights to three parties and return a drop-in secure module.
    With a ``name``, other drivers can use it later (``SecureModel.by_name``)."""
    return SecureModel(model, cluster, name)


def save_shares(model: SecureModel, directory: str | os.PathLike[str]) -> list[str]:
    """Each party writes its own shares of ``model`` (with the public architecture and
    buffers) to ``directory/party<rank>.safetensors`` on its own host; the paths, by rank.
    A party can then restart without the model owner (``securetorch party --shares FILE``)."""
    return model.cluster.run(_save_shares, model.key, os.fspath(directory))


def load_shares(directory: str | os.PathLike[str], cluster: Cluster) -> SecureModel:
    """Each party loads its own ``directory/party<rank>.safetensors``; the model, by its name."""
    names = cluster.run(_load_shares, os.fspath(directory))
    if len(set(names)) != 1:
        raise ValueError(f"the parties' files hold different models: {names}")
    return SecureModel.by_name(names[0], cluster)


__all__ = ["SecureModel", "default_cluster", "secure"]
