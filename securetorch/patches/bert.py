"""BERT (BertModel, BertForSequenceClassification): GELU via F.gelu, LayerNorm, softmax and
the tanh pooler run through the op tables unchanged; token ids enter as one-hot x table."""

from securetorch.patches.base import FamilySpec

BERT = FamilySpec(
    name="bert",
    classes=("BertModel", "BertForSequenceClassification"),
    embeddings="embeddings.word_embeddings",
    blocks="encoder.layer",
)
