"""BERT (BertModel, BertForSequenceClassification): GELU via F.gelu, LayerNorm, softmax and
the tanh pooler run through the op tables unchanged; token ids enter as one-hot x table."""

from securetorch.models.families import register
from securetorch.models.families.base import FamilySpec

BERT = register(
    FamilySpec(
        name="bert",
        classes=("BertModel", "BertForSequenceClassification"),
        embeddings="embeddings.word_embeddings",
        blocks="encoder.layer",
    )
)
