"""Per-model-family patchers: one module per family, each a declarative ``FamilySpec``.

``spec_for(model)`` finds the family of an HF model by its class; anything else raises a
``NotImplementedError`` that lists the supported classes.
"""

from __future__ import annotations

from typing import Any

from securetorch.patches.base import FamilySpec
from securetorch.patches.bert import BERT
from securetorch.patches.gpt2 import GPT2
from securetorch.patches.llama import LLAMA
from securetorch.patches.roberta import ROBERTA

FAMILIES: tuple[FamilySpec, ...] = (BERT, ROBERTA, GPT2, LLAMA)


def supported_classes() -> list[str]:
    return [name for family in FAMILIES for name in family.classes]


def spec_for(model: Any) -> FamilySpec:
    """The family of a model instance or class, or NotImplementedError listing the supported."""
    name = model.__name__ if isinstance(model, type) else type(model).__name__
    for family in FAMILIES:
        if name in family.classes:
            return family
    raise NotImplementedError(
        f"securetorch: {name} is not a supported model; supported: {', '.join(supported_classes())}"
    )


__all__ = ["FAMILIES", "FamilySpec", "spec_for", "supported_classes"]
