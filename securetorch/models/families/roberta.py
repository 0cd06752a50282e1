"""RoBERTa: as BERT, but position ids count from padding_idx + 1 over non-padding tokens.
The driver computes them from the padding pattern (public through the attention mask)."""

from securetorch.models.families import register
from securetorch.models.families.base import FamilySpec, padding_positions

ROBERTA = register(
    FamilySpec(
        name="roberta",
        classes=("RobertaModel", "RobertaForSequenceClassification"),
        embeddings="embeddings.word_embeddings",
        blocks="encoder.layer",
        derived_inputs=padding_positions,
    )
)
