"""``puma.secure(hf_model)``: a drop-in secure version of a Hugging Face model (driver side).

The model owner's driver sends the architecture (its class name, which the parties resolve
in securetorch's family registry, and its config as JSON) and deals every parameter as
secret shares (each party receives only its pair); the parties build their copy
(``models.service``). With ``weights="public"`` it deals nothing: each party opens the
owner's safetensors checkpoint itself and checks it against the SHA-256 the owner sends
(``models.checkpoint``); on one machine the driver writes that checkpoint for them. A client's driver calls it: token ids become a secret one-hot matrix
built by the driver (checked by the parties, so no equality tests over the vocabulary are
needed); the public inputs the family declares (masks, token types, positions) are checked
here and again by every party; anything else is refused before a message is sent. Only the
declared output comes back, reconstructed by the caller alone.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import transformers
import transformers.modeling_outputs

from securetorch.check import check
from securetorch.comm.stats import total
from securetorch.errors import InputError, PartyError
from securetorch.models import checkpoint as checkpoints
from securetorch.models.families import FamilySpec, spec_for
from securetorch.models.families.base import (
    base_model,
    check_pixels_shape,
    check_public_inputs,
    generation_inputs,
    get_path,
    max_positions,
)
from securetorch.models.service import (
    check_model_name,
    decoder_start,
    matching_structure,
    parameter_bindings,
    skeleton,
)
from securetorch.protocols.sampling import SamplingSettings
from securetorch.runtime.cluster import Cluster, InProcessCluster, LocalCluster
from securetorch.runtime.verbs import Verb
from securetorch.tensor.payload import private

ClusterKind = Literal["local", "inprocess"]
Weights = Literal["secret", "public"]
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


UNSUPPORTED_GENERATION: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "num_return_sequences": 1,
    "output_scores": False, "output_logits": False, "output_attentions": False, "output_hidden_states": False,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "forced_bos_token_id": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "guidance_scale": 1.0, "watermarking_config": None,
    "stop_strings": None, "max_time": None, "prompt_lookup_num_tokens": None,
}  # fmt: skip
"""Generation settings that change greedy decoding and that ``generate`` does not build, with
their neutral values: any other value (None means unset) is refused, naming it, before
anything is sent."""


@dataclass(frozen=True)
class StepCost:
    """The cost of one generation step: seconds on the driver's clock, bytes sent by all
    parties, rounds."""

    seconds: float
    bytes: int
    rounds: int


@dataclass
class SecureDecoderOnlyOutput(transformers.generation.utils.GenerateDecoderOnlyOutput):
    """HF's ``GenerateDecoderOnlyOutput`` (its ``sequences``; scores, logits, attentions and
    caches stay secret) with each step's ``costs``."""

    costs: list[StepCost] | None = None


@dataclass
class SecureEncoderDecoderOutput(transformers.generation.utils.GenerateEncoderDecoderOutput):
    """HF's ``GenerateEncoderDecoderOutput`` (its ``sequences``) with each step's ``costs``."""

    costs: list[StepCost] | None = None


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
        weights: Weights = "secret",
        checkpoint: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
    ) -> None:
        if weights not in ("secret", "public"):
            raise ValueError(f"weights is 'secret' (secret-shared) or 'public' (open weights), not {weights!r}")
        if weights == "secret" and (checkpoint is not None or sha256 is not None):
            raise ValueError("checkpoint= and sha256= name the public weights of weights='public'")
        if model.training:
            raise ValueError("secure() needs a model in eval mode: call model.eval() first")
        spec = spec_for(model)
        if isinstance(clients, str) or not all(isinstance(c, str) for c in clients):
            raise TypeError("clients is a list of driver names (as the cluster file names them)")
        key = check_model_name(name) if name is not None else f"model-{secrets.token_hex(8)}"
        config = json.loads(model.config.to_json_string(use_diff=False))
        absent = matching_structure(model, config)
        check(model).raise_for_problems()  # a dry run here: the parties would refuse these
        vocab_size = get_path(base_model(model), spec.embeddings).weight.shape[0] if spec.tokens else None
        can_generate = (spec.causal or spec.encoder_decoder) and hasattr(model, "lm_head")
        self._describe_as(type(model).__name__, spec, model.config, vocab_size, can_generate, cluster, key)
        self.weights = weights
        request: dict[str, Any] = {
            "name": key,
            "class": self.class_name,
            "config": config,
            "clients": list(clients),
            "check_inputs": bool(check_inputs),
            "persistent": name is not None,
            "absent": absent,
        }
        temporary = None
        if weights == "secret":
            params, bindings, buffers = parameter_bindings(model, lambda p: private(p, dtype=torch.float32))
            request["params"] = params
        else:
            public, bindings, buffers = parameter_bindings(model, lambda p: p)
            source, digest, temporary = self._public_checkpoint(public, checkpoint, sha256)
            request |= {"weights": "public", "checkpoint": source, "sha256": digest}
        request |= {"bindings": [list(b) for b in bindings], "buffers": [list(b) for b in buffers]}
        try:
            self.cluster.call(Verb.INSTALL, request)
        finally:
            if temporary is not None:  # the parties hold it mapped: their copies outlive the file
                shutil.rmtree(temporary, ignore_errors=True)
        self._installed = True
        if getattr(model, "generation_config", None) is not None:  # the owner's own settings
            self.generation_config = copy.deepcopy(model.generation_config)

    def _public_checkpoint(
        self, params: dict[str, torch.Tensor], checkpoint: str | os.PathLike[str] | None, sha256: str | None
    ) -> tuple[str, str, str | None]:
        """(what the parties open, its SHA-256, a temporary directory to remove after the
        install). Without a ``checkpoint``, on a cluster of this machine, the driver writes one
        (the parameters as they are, a tied one once) and the parties map it before it is
        removed. With one, on a cluster of this machine the parties open that path; on a
        deployment each party opens the file of that name in the ``checkpoints_dir`` of its
        own cluster file. ``sha256`` is given, or read here from a local copy."""
        local = isinstance(self.cluster, (LocalCluster, InProcessCluster))
        if checkpoint is None:
            if not local:
                raise ValueError(
                    "weights='public' on a deployment: pass checkpoint= the checkpoint file (each party opens the "
                    "file of that name in its checkpoints_dir)"
                )
            directory = tempfile.mkdtemp(prefix="securetorch-weights-")
            path = os.path.join(directory, "weights.safetensors")
            return path, checkpoints.write(params, path), directory
        source = os.fspath(checkpoint)
        if sha256 is None:
            if not os.path.isfile(source):
                raise ValueError(f"sha256= is needed: no local copy of {source!r} to read its digest from")
            sha256 = checkpoints.sha256(source)
        return os.path.abspath(source) if local else os.path.basename(source), sha256.lower(), None

    def _describe_as(
        self,
        class_name: str,
        spec: FamilySpec,
        config: Any,
        vocab_size: int | None,
        can_generate: bool,
        cluster: Cluster | ClusterKind | None,
        key: str,
    ) -> None:
        self.spec = spec
        self.config = config
        self.class_name = class_name
        self.can_generate = can_generate
        self.generation_costs: list[StepCost] = []
        self.generation_config = transformers.GenerationConfig.from_model_config(config)
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
            None if described["vocab_size"] is None else int(described["vocab_size"]),
            bool(described["can_generate"]),
            cluster,
            name,
        )
        model.weights = described["weights"]
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
        """Call the secure model: ``input_ids`` (or, for a vision model, ``pixel_values``) and
        the public inputs its family declares (``attention_mask``, ``token_type_ids``,
        ``position_ids``, ...); returns the model's output type with its declared output only
        (last hidden state and pooled output, or logits). Any other keyword raises
        ``InputError`` naming it; nothing is sent."""
        if not self.spec.tokens:
            return self._call_on_pixels(input_ids, **inputs)
        if input_ids is None:
            raise InputError("pass input_ids (token ids are secret-shared by the driver as one-hot rows)")
        self._check_ids(input_ids)
        request: dict[str, Any] = {"model": self.key}
        if self.spec.encoder_decoder:
            decoder_ids = inputs.pop("decoder_input_ids", None)
            if decoder_ids is None:
                raise InputError(f"{self.class_name} needs decoder_input_ids (the decoder's tokens, secret too)")
            self._check_ids(decoder_ids)
            if decoder_ids.shape[0] != input_ids.shape[0]:
                raise InputError("decoder_input_ids must have the batch size of input_ids")
            request["decoder_onehot"] = self.onehot(decoder_ids)
        public = self._public_inputs(input_ids, inputs)
        return self._forward({**request, "onehot": self.onehot(input_ids), "inputs": public})

    def _call_on_pixels(self, input_ids: Any = None, pixel_values: Any = None, **inputs: Any) -> Any:
        """A vision model's call: the pixels are the secret (fixed point), nothing else is taken."""
        if input_ids is not None:
            raise InputError(f"{self.class_name} takes pixel_values, not input_ids")
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            raise InputError("pixel_values must be a float tensor [batch, channels, height, width]")
        check_pixels_shape(self.config, tuple(pixel_values.shape))
        public = check_public_inputs(
            self.spec, self.config, pixel_values.shape[0], 0, inputs, class_name=self.class_name
        )
        return self._forward({"model": self.key, "pixel_values": private(pixel_values.float()), "inputs": public})

    def _forward(self, request: dict[str, Any]) -> Any:
        results = self.cluster.call(Verb.FORWARD, request)
        if any(r["output"] != results[0]["output"] for r in results):
            raise PartyError("the parties returned different output types")
        return _output(results[0]["output"], results[0]["fields"])

    forward = __call__

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs: Any
    ) -> torch.Tensor:
        """Sentence embeddings, as sentence-transformers' encoders make them: the secure
        forward's last hidden state, mean-pooled over each row's real tokens and L2-normalised
        on the driver (the parties return the hidden states to the caller only)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out = self(input_ids=input_ids, attention_mask=mask, **inputs)
        return mean_pooling(out.last_hidden_state, mask)

    def generate(
        self,
        input_ids: torch.Tensor,
        generation_config: transformers.GenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer: Any = None,
        stopping_criteria: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Decoding over a secret KV cache, called as HF's ``generate`` is: settings from
        ``generation_config`` (by default the model's) updated by keyword arguments
        (``max_new_tokens``, ``max_length``, ``eos_token_id``, one id or a list,
        ``pad_token_id``, ``forced_eos_token_id``, ``min_new_tokens``, ``min_length``,
        ``suppress_tokens``, ``begin_suppress_tokens``, ``return_dict_in_generate``). Greedy by a
        secure argmax; with ``do_sample=True`` each token is drawn inside MPC from the softmax
        of the logits / ``temperature`` with ``top_k`` and ``top_p`` applied
        (``protocols.sampling``): no party learns the distribution, the draw or the token;
        ``seed=`` makes the draws reproducible (for tests: the parties then know the uniform
        draws, never the distribution or the tokens).

        Each new token costs one token's pass. The chosen token's one-hot stays secret in the
        parties and feeds the next step; only the driver learns the tokens. Returns prompt +
        new tokens, as HF does (left-pad batched prompts; after its eos a row continues with the
        padding token). A sequence-to-sequence model (T5) encodes the prompt once, keeps the
        encoder's output secret in the parties, and returns the decoder's start token + new
        tokens. ``streamer`` (``TextStreamer``, ...) gets each token as it arrives;
        ``stopping_criteria`` run on the tokens so far (the caller's, revealed; ``scores`` is
        None: the logits stay secret). Settings it cannot honour securely (beams, penalties,
        scores, ...) raise ``NotImplementedError`` naming them, before anything is
        sent. ``generation_costs`` then holds each step's seconds, bytes (all parties) and rounds.
        """
        if not self.can_generate:
            raise NotImplementedError(f"securetorch: {self.class_name} has no language-model head to generate with")
        seed = kwargs.pop("seed", None)
        config = self._generation_settings(generation_config, kwargs)
        self._check_ids(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        self._public_inputs(input_ids, {"attention_mask": mask})
        prefix = (
            torch.full_like(input_ids[:, :1], decoder_start(self.config)) if self.spec.encoder_decoder else input_ids
        )
        new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prefix.shape[1]
        sampling = _sampling(config, seed)
        eos = _token_ids(config.eos_token_id)
        pad = config.pad_token_id if config.pad_token_id is not None else eos[0] if eos else 0
        sequences, unfinished = prefix, torch.ones(input_ids.shape[0], dtype=torch.bool)
        self.generation_costs = []
        if streamer is not None:
            streamer.put(prefix)
        try:
            for step in range(max(new, 0)):
                public = generation_inputs(self.spec, mask, first=step == 0)
                before, started = total(self.cluster.stats()), time.perf_counter()
                suppress = _suppressed(config, step, prefix.shape[1])
                if step == 0:
                    args = {"model": self.key, "onehot": self.onehot(input_ids), "inputs": public}
                    token = self.cluster.call(
                        Verb.GENERATE_START, {**args, "sampling": sampling, "suppress": suppress}
                    )[0]
                else:
                    args = {"model": self.key, "inputs": public, "suppress": suppress}
                    token = self.cluster.call(Verb.GENERATE_STEP, args)[0]
                seconds = time.perf_counter() - started
                cost = total(self.cluster.stats()) - before
                self.generation_costs.append(StepCost(seconds, cost.bytes_sent, cost.rounds))
                if config.forced_eos_token_id is not None and step == new - 1:  # never fed back: forced here
                    token = torch.full_like(token, _token_ids(config.forced_eos_token_id)[0])
                token = torch.where(unfinished, token, torch.full_like(token, pad)).to(input_ids.dtype)
                sequences = torch.cat([sequences, token[:, None]], dim=1)
                if streamer is not None:
                    streamer.put(token)
                if eos:
                    unfinished &= ~torch.isin(token, torch.tensor(eos, dtype=token.dtype))
                if stopping_criteria is not None:
                    unfinished &= ~torch.as_tensor(stopping_criteria(sequences, None), dtype=torch.bool)
                if not self.spec.encoder_decoder:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                if not bool(unfinished.any()):
                    break
        finally:
            if streamer is not None:
                streamer.end()
            if not self.cluster._closed and not self.cluster._broken:
                self.cluster.call(Verb.GENERATE_END, {"model": self.key})
        if not config.return_dict_in_generate:
            return sequences
        output = SecureEncoderDecoderOutput if self.spec.encoder_decoder else SecureDecoderOnlyOutput
        return output(sequences=sequences, costs=list(self.generation_costs))

    def _generation_settings(
        self, generation_config: transformers.GenerationConfig | None, kwargs: dict[str, Any]
    ) -> transformers.GenerationConfig:
        """The generation settings of one call, as HF's ``generate`` makes them (the model's
        generation config, or the one given, updated by keyword arguments), refused where this
        greedy secure decoding cannot honour them, before anything is sent."""
        base = generation_config if generation_config is not None else self.generation_config
        config = copy.deepcopy(base)
        unused = config.update(**kwargs)
        if unused:
            raise TypeError(f"generate() got unexpected keyword arguments {sorted(unused)}")
        refused = [
            f"{name}={value!r}"
            for name, neutral in UNSUPPORTED_GENERATION.items()
            if (value := getattr(config, name, None)) is not None and value != neutral
        ]
        if refused:
            raise NotImplementedError(
                f"securetorch: generate cannot honour {', '.join(refused)} securely: it decodes by a secure "
                "argmax, or draws inside MPC with temperature, top_k and top_p"
            )
        return config

    def close(self) -> None:
        """Drop the parties' copy of a model this object installed (a model attached by name
        stays with its owner)."""
        if self._installed and not self.cluster._closed and not self.cluster._broken:
            self.cluster.call(Verb.UNINSTALL, {"name": self.key})
            self._installed = False


def mean_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """The mean of each row's hidden states over its real tokens (``attention_mask`` 1), then
    L2-normalised (``normalize``): a sentence embedding, computed by the caller on revealed
    hidden states."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def _suppressed(config: transformers.GenerationConfig, step: int, prefix: int) -> list[int]:
    """The public token ids a step may not choose, as HF's logits processors decide them: eos
    before ``min_new_tokens`` new tokens or a sequence of ``min_length`` (``prefix`` tokens
    before the first new one), ``suppress_tokens`` always, ``begin_suppress_tokens`` first."""
    ids: set[int] = set()
    eos = _token_ids(config.eos_token_id)
    if step < (config.min_new_tokens or 0) or prefix + step < (config.min_length or 0):
        ids |= set(eos)
    ids |= set(_token_ids(config.suppress_tokens))
    if step == 0:
        ids |= set(_token_ids(config.begin_suppress_tokens))
    return sorted(ids)


def _sampling(config: transformers.GenerationConfig, seed: int | None) -> dict[str, Any] | None:
    """The public sampling settings a generation sends (None: greedy), as HF reads them from
    its generation config: temperature, top_k (0 or None: off), top_p (1.0 or None: off);
    checked here as the parties check them. A ``seed`` makes the draws reproducible."""
    if not config.do_sample:
        if seed is not None:
            raise ValueError("seed is for sampled generation (do_sample=True)")
        return None
    settings = SamplingSettings(
        temperature=1.0 if config.temperature is None else float(config.temperature),
        top_k=config.top_k or None,
        top_p=None if config.top_p is None or config.top_p >= 1 else float(config.top_p),
        seed=seed,
    )
    return {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p, "seed": seed}


def _token_ids(value: Any) -> list[int]:
    """One token id or a list of them, as a list (empty for None)."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple, torch.Tensor)) else [int(value)]


def secure(
    model: torch.nn.Module,
    cluster: Cluster | ClusterKind | None = None,
    name: str | None = None,
    clients: Sequence[str] = (),
    check_inputs: bool = True,
    weights: Weights = "secret",
    checkpoint: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
) -> SecureModel:
    """Secret-share ``model``'s weights to three parties and return a drop-in secure module.

    ``cluster``: the parties (a ``Cluster``); by default this process's ``LocalCluster``;
    ``"inprocess"`` runs the three parties as threads of this process (quick to start, for
    notebooks and experiments; no isolation between the parties). With a ``name`` the model stays in the parties after this driver leaves, and the drivers
    listed in ``clients`` (by their cluster-file names) may call it with
    ``SecureModel.by_name``; without one it lives as long as this driver's session.
    ``check_inputs=False`` skips the parties' check that each client input is a one-hot
    matrix (for clients the owner trusts; it saves the check's bytes and two rounds).

    ``weights="public"``: the model's weights are open (an open-weight LLM); only the input,
    every activation, the KV cache and the output stay secret. Nothing is dealt: each party
    opens the safetensors ``checkpoint`` itself and checks its ``sha256`` (read from the file
    when this driver has it): on a deployment the file of that name in the party's
    ``checkpoints_dir``, on a cluster of this machine the file itself, or by default a
    checkpoint the driver writes from ``model``. A public weight times a secret activation
    is then local. See the README's "Secret or public weights"."""
    return SecureModel(model, cluster, name, clients, check_inputs, weights, checkpoint, sha256)


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


__all__ = [
    "SecureDecoderOnlyOutput",
    "SecureEncoderDecoderOutput",
    "SecureModel",
    "StepCost",
    "default_cluster",
    "load_shares",
    "mean_pooling",
    "save_shares",
    "secure",
]
