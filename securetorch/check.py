"""``puma.check(model)``: will this model run securely? A dry run on the driver that sends
nothing and needs no parties.

It builds the model exactly as the parties will (``models.service.build``: the class from
the registry, the config as JSON, the submodules the model holds as None dropped, the
family's swaps, the module-path hooks), with stand-in secrets in place of the weights (meta
shares: no memory, nothing computed) and the model's own public buffers, and runs the
parties' forward (``service.forward``) on a stand-in secret input of a few tokens (or
pixels), plus a prefill and one cached step for a language model that generates, inside a
``tensor.dryrun.DryRun``. Every torch function goes to the handler a party would run, so the
report lists exactly what the parties would refuse: functions with no secure protocol,
arguments a handler refuses, Python control flow on a secret, each with the module path
where it occurs.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from securetorch.models import service
from securetorch.models.families import FamilySpec, spec_for
from securetorch.models.families.base import generation_inputs, max_positions, pixels_shape
from securetorch.tensor.dryrun import DryRun, Problem, dry_run, secret

TOKENS = 4
"""Length of the stand-in token sequence (one sequence)."""


@dataclass(frozen=True)
class CheckReport:
    """What ``check`` found: the model's class name, one ``Problem`` per (torch function,
    module path) the secure path cannot run, in order of first occurrence, and the seconds the
    check took."""

    model: str
    problems: tuple[Problem, ...]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the secure path runs every function the model calls."""
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"{self.model}: every torch function it calls runs securely"
        lines = [f"{self.model}: {len(self.problems)} place(s) the secure path cannot run:"]
        return "\n".join([*lines, *(f"  {problem}" for problem in self.problems)])

    def raise_for_problems(self) -> None:
        """Raise ``NotImplementedError`` listing the problems (nothing when there are none)."""
        if not self.ok:
            raise NotImplementedError(f"securetorch: {self}")


def check(model: torch.nn.Module) -> CheckReport:
    """Dry-run ``model`` as the parties would run it, on the driver, and list every torch
    function or argument the secure path cannot run, with the module path where it occurs.

    Sends nothing and starts no cluster. A model that ``secure`` refuses outright (a
    mixture-of-experts model, a class that is not a transformers model) raises the same
    ``NotImplementedError``; a model that differs from what its config describes raises
    ``ValueError``. A forward that fails in the dry run for a reason it did not record raises
    ``RuntimeError`` naming the module where it failed; after a recorded problem, or on a
    refusal outside the op tables (the secret one-hot used other than by the token
    embedding), the failure is listed as the place the dry run stopped."""
    started = time.perf_counter()
    spec_for(model)  # the refusals secure() makes before anything else
    name = type(model).__name__
    config = json.loads(model.config.to_json_string(use_diff=False))
    installed = _install(model, name, config, service.matching_structure(model, config))
    with dry_run() as run:
        try:
            _run(run, installed)
        except Exception as error:
            failure = _describe(error)
            if not run.problems and not isinstance(error, NotImplementedError):  # not a refusal: a failure
                raise RuntimeError(
                    f"securetorch.check: the dry run of {name} failed in {run.module or '(model)'}: {failure}"
                ) from error
            run.record("(dry run stopped)", "", f"the dry run stopped here ({failure}); later problems are not listed")
    return CheckReport(name, run.problems, time.perf_counter() - started)


def _describe(error: Exception) -> str:
    """An error with the place it was raised (file:line in function)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return f"{type(error).__name__}{where}: {error}"


def _install(model: torch.nn.Module, name: str, config: dict[str, Any], absent: list[str]) -> service.InstalledModel:
    """The parties' copy of ``model`` (``service.build``), with stand-in secrets for its
    parameters (bound as ``secure`` binds them) and the model's own buffers (public)."""
    params, bindings, buffers = service.parameter_bindings(model, lambda p: secret(p.shape))
    built, spec = service.build(name, config, params, bindings, buffers, absent)
    return service.InstalledModel(
        name="check", owner="", clients=(), check_inputs=False, class_name=name, model=built, spec=spec,
        bindings=bindings, buffers=buffers, absent=tuple(absent),
    )  # fmt: skip


def _run(run: DryRun, installed: service.InstalledModel) -> None:
    """The parties' forward on stand-in secret inputs; for a model that generates, the first
    step of a generation and one more on the secret KV cache too (up to their secure argmax)."""
    spec, config, ctx = installed.spec, installed.config, run.context
    if not spec.tokens:
        service.forward(ctx, installed, secret((1, *pixels_shape(config))), {})
        return
    limit = max_positions(config)
    length = TOKENS if limit is None or limit < 1 else min(TOKENS, limit)
    vocab = int(installed.table.shape[0])
    decoder = secret((1, length, vocab), torch.int64) if spec.encoder_decoder else None
    onehot = secret((1, length, vocab), torch.int64)
    service.forward(ctx, installed, onehot, _public_inputs(spec, config, length), decoder=decoder)
    if installed.can_generate:
        mask = torch.ones(1, length, dtype=torch.long)
        generation, first, public = service.start_generation(
            ctx, installed, onehot, generation_inputs(spec, mask, first=True)
        )
        _until_argmax(installed, lambda: service.step(ctx, installed, generation, first, public))
        generation.onehot = secret((1, 1, vocab), torch.int64)
        later = generation_inputs(spec, torch.ones(1, length + 1, dtype=torch.long), first=False)
        _until_argmax(installed, lambda: service.generate_step(ctx, installed, generation, later))


def _until_argmax(installed: service.InstalledModel, step: Any) -> None:
    """Run a generation step; the dry run stops at its secure argmax over the logits (a
    protocol outside the op tables, which runs on any logits, and not on stand-ins)."""
    forwarded: list[bool] = []
    handle = installed.model.register_forward_hook(lambda *_: forwarded.append(True))
    try:
        step()
    except Exception:
        if not forwarded:  # the model's own forward failed
            raise
    finally:
        handle.remove()


def _public_inputs(spec: FamilySpec, config: Any, length: int) -> dict[str, torch.Tensor]:
    """The public inputs of one sequence of ``length`` tokens, none of them padding: those the
    family derives on the driver (from stand-in token ids), the mask, zero token types, and
    positions 0..length-1, wherever the family declares them."""
    pad = getattr(config.get_text_config(), "pad_token_id", None)
    ids = torch.full((1, length), 1 if pad == 0 else 0)
    inputs: dict[str, torch.Tensor] = {}
    if "attention_mask" in spec.inputs:
        inputs["attention_mask"] = torch.ones(1, length, dtype=torch.long)
    if "token_type_ids" in spec.inputs:
        inputs["token_type_ids"] = torch.zeros(1, length, dtype=torch.long)
    if spec.derived_inputs is not None:
        inputs |= spec.derived_inputs(config, {"input_ids": ids, **inputs})
    if "position_ids" in spec.inputs and "position_ids" not in inputs:
        inputs["position_ids"] = torch.arange(length).unsqueeze(0)
    return inputs


__all__ = ["CheckReport", "Problem", "check"]
