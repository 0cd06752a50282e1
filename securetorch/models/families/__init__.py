"""Model families: each module declares one ``FamilySpec`` and registers it.

An architecture travels between a driver and the parties as a class name, looked up here:
``model_class(name)`` resolves only the names a registered family lists, so a party never
imports or builds anything a driver names beyond them. ``spec_for(model)`` finds the family
of a model or class; anything else raises a ``NotImplementedError`` listing what is supported.
"""

from __future__ import annotations

from typing import Any

import transformers

from securetorch.models.families.base import FamilySpec

FAMILIES: list[FamilySpec] = []


def register(spec: FamilySpec) -> FamilySpec:
    """Add a family (its module calls this at import); a class may belong to one family only."""
    taken = set(supported_classes()) & set(spec.classes)
    if taken:
        raise ValueError(f"model classes {sorted(taken)} already belong to a registered family")
    FAMILIES.append(spec)
    return spec


def supported_classes() -> list[str]:
    return [name for family in FAMILIES for name in family.classes]


def _unsupported(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"securetorch: {name} is not a supported model; supported: {', '.join(supported_classes())}"
    )


def spec_for(model: Any) -> FamilySpec:
    """The family of a model instance, class, or class name."""
    if isinstance(model, str):
        name = model
    else:
        name = model.__name__ if isinstance(model, type) else type(model).__name__
    for family in FAMILIES:
        if name in family.classes:
            return family
    raise _unsupported(name)


def model_class(name: Any) -> type:
    """The Hugging Face class a registered family lists under ``name``."""
    if not isinstance(name, str) or name not in supported_classes():
        raise _unsupported(str(name)[:100])
    return getattr(transformers, name)


from securetorch.models.families import bert, gpt2, llama, roberta  # noqa: E402  - register the families

__all__ = ["FAMILIES", "FamilySpec", "bert", "gpt2", "llama", "model_class", "register", "roberta", "spec_for"]
