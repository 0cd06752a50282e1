"""RoBERTa: as BERT, but position ids count from padding_idx + 1 over non-padding tokens.
The driver computes them from the padding pattern (public through the attention mask)."""

from typing import Any

import torch

from securetorch.models.families import register
from securetorch.models.families.base import FamilySpec


def _positions(config: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    if inputs.get("position_ids") is not None:
        return {}
    ids = inputs["input_ids"]
    padding_idx = config.pad_token_id
    not_pad = (ids != padding_idx).int()
    return {"position_ids": (torch.cumsum(not_pad, dim=1) * not_pad + padding_idx).long()}


ROBERTA = register(
    FamilySpec(
        name="roberta",
        classes=("RobertaModel", "RobertaForSequenceClassification"),
        embeddings="embeddings.word_embeddings",
        blocks="encoder.layer",
        derived_inputs=_positions,
    )
)
