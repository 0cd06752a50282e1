"""LLaMA (LlamaModel, LlamaForCausalLM): rotary embeddings with public cos/sin (from public
position ids), grouped-query attention (repeat_kv is expand + reshape), gated SiLU MLP, and
RMSNorm swapped for ``F.rms_norm`` (its variance keeps 8 extra fractional bits, which the
small activations of a transformer's residual stream need)."""

from securetorch.models.families import register
from securetorch.models.families.base import FamilySpec, SecureRMSNorm

LLAMA = register(
    FamilySpec(
        name="llama",
        classes=("LlamaModel", "LlamaForCausalLM"),
        embeddings="embed_tokens",
        blocks="layers",
        swaps={"LlamaRMSNorm": SecureRMSNorm},
        inputs=("attention_mask", "position_ids"),
        causal=True,
    )
)
