"""Model families: each module declares one ``FamilySpec`` and registers it.

An architecture travels between a driver and the parties as a class name, looked up here:
``model_class(name)`` resolves the names a registered family lists and transformers' own
model classes (subclasses of ``PreTrainedModel`` in its namespace), so a party never imports
anything a driver names. ``spec_for(model)`` finds a model's family, or reads a spec off its
architecture (``generic``) when no family lists it; a model that cannot run securely raises a
``NotImplementedError`` that says why.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch
import transformers

from securetorch.models.families.base import FamilySpec
from securetorch.models.families.generic import generic_class, generic_spec

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
    families = supported_classes()
    listed = f" (family files add {', '.join(families)})" if families else ""
    return NotImplementedError(
        f"securetorch: {name} is not a Hugging Face transformers model class; any transformers model "
        f"built from supported torch functions runs{listed}"
    )


def spec_for(model: Any) -> FamilySpec:
    """The family of a model (an instance, or a registered class or class name): a registered
    family's spec, else one read off the model's architecture (``generic.generic_spec``)."""
    name = model if isinstance(model, str) else model.__name__ if isinstance(model, type) else type(model).__name__
    for family in FAMILIES:
        if name in family.classes:
            return family
    if isinstance(model, torch.nn.Module):
        return generic_spec(model)
    raise _unsupported(str(name)[:100])


def model_class(name: Any) -> type:
    """The Hugging Face class ``name``: one a registered family lists, or a transformers model
    class (looked up in transformers' namespace, never imported from elsewhere)."""
    if isinstance(name, str) and name in supported_classes():
        return getattr(transformers, name)
    cls = generic_class(name)
    if cls is None:
        raise _unsupported(str(name)[:100])
    return cls


def _register_all() -> None:
    """Import every module of this package: a family file registers itself when imported, so
    adding one touches that file only."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("base", "generic"):
            importlib.import_module(f"{__name__}.{module.name}")


_register_all()

__all__ = ["FAMILIES", "FamilySpec", "generic_spec", "model_class", "register", "spec_for"]
