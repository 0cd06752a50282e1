"""``puma.secure(hf_model)``: a drop-in secure version of a Hugging Face model (driver side).

The model owner's driver sends the architecture (its class name, which the parties resolve
in securetorch's family registry, and its config as JSON) and deals every parameter as
secret shares (each party receives only its pair); the parties build their copy
(``models.service``). A client's driver calls it: token ids become a secret one-hot matrix
built by the driver (checked by the parties, so no equality tests over the vocabulary are
needed); the public inputs the family declares (masks, token types, positions) are checked
here and again by every party; anything else is refused before a message is sent. Only the
declared output comes back, reconstructed by the caller alone.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import transformers.modeling_outputs

from securetorch.comm.stats import total
from securetorch.errors import InputError, PartyError
from securetorch.models.families import FamilySpec, spec_for
from securetorch.models.families.base import base_model, check_public_inputs, get_path, max_positions
from securetorch.models.service import absent_modules, check_model_name, drop_absent, skeleton, structure_difference
from securetorch.runtime.cluster import Cluster, InProcessCluster, LocalCluster
from securetorch.runtime.verbs import Verb
from securetorch.tensor.payload import private

ClusterKind = Literal["local", "inprocess"]
_DEFAULTS: dict[str, Cluster] = {}


def default_cluster(kind: ClusterKind = "local") -> Cluster:
    """The process-wide cluster that ``secure(model)`` uses when given none (``"local"``: a
    ``LocalCluster``, three processes) or ``cluster="inprocess"`` (an ``InProcessCluster``:
    three threads of this process, no isolation between the parties). Closed at exit."""
    if kind not in ("local", "inprocess"):
        raise ValueError(f"cluster is a Cluster, 'local' or 'inprocess', not {kind!r}")
    cluster = _DEFAULTS.get(kind)
    if cluster is None or cluster._closed:
        cluster = _DEFAULTS[kind] = LocalCluster() if kind == "local" else InProcessCluster()
    return cluster


def _matching_structure(model: torch.nn.Module, config: dict[str, Any]) -> list[str]:
    """Check, before anything is sent, that the parties will build exactly this model from
    its class and config; return the submodules it holds as None (constructor options such
    as ``add_pooling_layer=False``), which the parties then drop too."""
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


@dataclass(frozen=True)
class StepCost:
    """The cost of one generation step: seconds on the driver's clock, bytes sent by all
    parties, rounds."""

    seconds: float
    bytes: int
    rounds: int


def _output(name: Any, fields: dict[str, torch.Tensor]) -> Any:
    """The HF output type the parties name, looked up among transformers' output classes
    only (a plain dict for any other name)."""
    cls = getattr(transformers.modeling_outputs, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, transformers.modeling_outputs.ModelOutput):
        return cls(**fields)
    return dict(fields)


class SecureModel:
    """A model whose weights live secret-shared in three parties; call it like the original.

    ``secure(model)`` makes one from a plaintext model (the model owner);
    ``SecureModel.by_name(name, cluster)`` attaches to one the parties already hold (a
    client named by its owner), without ever seeing the weights."""

    def __init__(
        self,
        model: torch.nn.Module,
        cluster: Cluster | ClusterKind | None = None,
        name: str | None = None,
        clients: Sequence[str] = (),
        check_inputs: bool = True,
    ) -> None:
        if model.training:
            raise ValueError("secure() needs a model in eval mode: call model.eval() first")
        spec = spec_for(model)
        if isinstance(clients, str) or not all(isinstance(c, str) for c in clients):
            raise TypeError("clients is a list of driver names (as the cluster file names them)")
        key = check_model_name(name) if name is not None else f"model-{secrets.token_hex(8)}"
        config = json.loads(model.config.to_json_string(use_diff=False))
        absent = _matching_structure(model, config)
        vocab_size = get_path(base_model(model), spec.embeddings).weight.shape[0]
        can_generate = spec.causal and hasattr(model, "lm_head")
        self._describe_as(type(model).__name__, spec, model.config, vocab_size, can_generate, cluster, key)
        params: dict[str, Any] = {}
        keys: dict[int, str] = {}
        bindings: list[list[str]] = []
        buffers: list[list[Any]] = []
        for module_name, module in model.named_modules():
            for attr, param in module._parameters.items():
                if param is None:
                    continue
                param_key = keys.setdefault(id(param), f"{module_name}.{attr}".lstrip("."))
                if param_key not in params:
                    params[param_key] = private(param.detach(), dtype=torch.float32)
                bindings.append([module_name, attr, param_key])
            for attr, buffer in module._buffers.items():
                if buffer is not None:  # derived from the public config (positions, rotary frequencies)
                    buffers.append([module_name, attr, buffer.detach()])
        self.cluster.call(
            Verb.INSTALL,
            {
                "name": key,
                "class": self.class_name,
                "config": config,
                "clients": list(clients),
                "check_inputs": bool(check_inputs),
                "persistent": name is not None,
                "params": params,
                "bindings": bindings,
                "buffers": buffers,
                "absent": absent,
            },
        )
        self._installed = True

    def _describe_as(
        self,
        class_name: str,
        spec: FamilySpec,
        config: Any,
        vocab_size: int,
        can_generate: bool,
        cluster: Cluster | ClusterKind | None,
        key: str,
    ) -> None:
        self.spec = spec
        self.config = config
        self.class_name = class_name
        self.can_generate = can_generate
        self.generation_costs: list[StepCost] = []
        self.cluster = cluster if isinstance(cluster, Cluster) else default_cluster(cluster or "local")
        self.key = key
        self.vocab_size = vocab_size
        self.max_positions = max_positions(config)
        self._installed = False

    @classmethod
    def by_name(cls, name: str, cluster: Cluster) -> SecureModel:
        """The secure model the parties hold under ``name`` (its owner must name this driver
        among its clients): its public architecture comes from the parties; the weights stay
        with them."""
        facts = cluster.call(Verb.DESCRIBE, {"name": name})
        if any(f != facts[0] for f in facts[1:]):
            raise PartyError(f"the parties describe {name!r} differently")
        described = facts[0]
        skeleton_model, spec = skeleton(described["class"], described["config"], swap=False)
        model = cls.__new__(cls)
        model._describe_as(
            described["class"],
            spec,
            skeleton_model.config,
            int(described["vocab_size"]),
            bool(described["can_generate"]),
            cluster,
            name,
        )
        return model

    def _check_ids(self, input_ids: Any) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise InputError("input_ids must be an integer tensor")
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise InputError(f"input_ids must have shape [batch, sequence], got {tuple(input_ids.shape)}")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size:
            raise InputError(
                f"token ids must lie in [0, {self.vocab_size}), got {int(input_ids.min())}..{int(input_ids.max())}"
            )
        if self.max_positions is not None and input_ids.shape[1] > self.max_positions:
            raise InputError(f"sequence of {input_ids.shape[1]} tokens exceeds the model's {self.max_positions}")

    def _public_inputs(self, input_ids: torch.Tensor, inputs: dict[str, Any], past: int = 0) -> dict[str, torch.Tensor]:
        """The call's public inputs (and those the family derives), checked as the parties will."""
        if self.spec.derived_inputs is not None:
            inputs = {**inputs, **self.spec.derived_inputs(self.config, {"input_ids": input_ids, **inputs})}
        batch, length = input_ids.shape
        return check_public_inputs(self.spec, self.config, batch, length, inputs, past, self.class_name)

    def onehot(self, input_ids: torch.Tensor) -> Any:
        """The secret one-hot matrix of the token ids (integers: the product with the table is exact)."""
        return private(torch.nn.functional.one_hot(input_ids.long(), self.vocab_size), dtype=torch.int64)

    def __call__(self, input_ids: torch.Tensor | None = None, **inputs: Any) -> Any:
        """Call the secure model: ``input_ids`` and the public inputs its family declares
        (``attention_mask``, ``token_type_ids``, ``position_ids``, ...); returns the model's
        output type with its declared output only (last hidden state and pooled output, or
        logits). Any other keyword raises ``InputError`` naming it; nothing is sent."""
        if input_ids is None:
            raise InputError("pass input_ids (token ids are secret-shared by the driver as one-hot rows)")
        self._check_ids(input_ids)
        public = self._public_inputs(input_ids, inputs)
        results = self.cluster.call(
            Verb.FORWARD, {"model": self.key, "onehot": self.onehot(input_ids), "inputs": public}
        )
        if any(r["output"] != results[0]["output"] for r in results):
            raise PartyError("the parties returned different output types")
        return _output(results[0]["output"], results[0]["fields"])

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
        self._public_inputs(input_ids, {"attention_mask": mask})
        pad = pad_token_id if pad_token_id is not None else eos_token_id
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool)
        new_tokens: list[torch.Tensor] = []
        self.generation_costs = []
        try:
            for step in range(max_new_tokens):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                public = {"attention_mask": mask, "position_ids": positions if step == 0 else positions[:, -1:]}
                before, started = total(self.cluster.stats()), time.perf_counter()
                if step == 0:
                    args = {"model": self.key, "onehot": self.onehot(input_ids), "inputs": public}
                    token = self.cluster.call(Verb.GENERATE_START, args)[0]
                else:
                    token = self.cluster.call(Verb.GENERATE_STEP, {"model": self.key, "inputs": public})[0]
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
            if not self.cluster._closed and not self.cluster._broken:
                self.cluster.call(Verb.GENERATE_END, {"model": self.key})
        return torch.cat([input_ids, torch.stack(new_tokens, dim=1).to(input_ids.dtype)], dim=1)

    def close(self) -> None:
        """Drop the parties' copy of a model this object installed (a model attached by name
        stays with its owner)."""
        if self._installed and not self.cluster._closed and not self.cluster._broken:
            self.cluster.call(Verb.UNINSTALL, {"name": self.key})
            self._installed = False


def secure(
    model: torch.nn.Module,
    cluster: Cluster | ClusterKind | None = None,
    name: str | None = None,
    clients: Sequence[str] = (),
    check_inputs: bool = True,
) -> SecureModel:
    """Secret-share ``model``'s weights to three parties and return a drop-in secure module.

    ``cluster``: the parties (a ``Cluster``); by default this process's ``LocalCluster``;
    ``"inprocess"`` runs the three parties as threads of this process (quick to start, for
    notebooks and experiments; no isolation between the parties). With a ``name`` the model stays in the parties after this driver leaves, and the drivers
    listed in ``clients`` (by their cluster-file names) may call it with
    ``SecureModel.by_name``; without one it lives as long as this driver's session.
    ``check_inputs=False`` skips the parties' check that each client input is a one-hot
    matrix (for clients the owner trusts; it saves the check's bytes and two rounds)."""
    return SecureModel(model, cluster, name, clients, check_inputs)


def save_shares(model: SecureModel, directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Each party writes its own shares of ``model`` (with the public architecture, buffers,
    owner and clients) to a safetensors file on its own host; the paths, by rank. A service
    party writes to ``<shares_dir>/<name>/party<rank>.safetensors``, ``shares_dir`` coming
    from its own cluster file; only an admin driver (a ``LocalCluster``'s) names a
    ``directory`` itself. A party can then restart without the model owner
    (``securetorch party --shares FILE``)."""
    where = None if directory is None else os.fspath(directory)
    return model.cluster.call(Verb.SAVE_SHARES, {"name": model.key, "directory": where})


def load_shares(
    cluster: Cluster, name: str | None = None, directory: str | os.PathLike[str] | None = None
) -> SecureModel:
    """Each party loads its own share file of model ``name`` (from its ``shares_dir``), or,
    for an admin driver, ``directory/party<rank>.safetensors``; the model, attached by name."""
    where = None if directory is None else os.fspath(directory)
    names = cluster.call(Verb.LOAD_SHARES, {"name": name, "directory": where})
    if len(set(names)) != 1:
        raise ValueError(f"the parties' files hold different models: {names}")
    return SecureModel.by_name(names[0], cluster)


__all__ = ["SecureModel", "StepCost", "default_cluster", "load_shares", "save_shares", "secure"]
